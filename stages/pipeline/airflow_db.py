"""Connection arguments for Airflow's SQLite metadata DB (the ``airflow standalone`` default).

SQLite lets one writer in at a time, and Python's sqlite3 soon gives up with "database is locked"; the
scheduler, the dag processor, the API server and a CLI command such as ``airflow backfill create`` can hold the
lock longer. These dicts make every connection wait up to ``SQLITE_BUSY_TIMEOUT_S`` instead; the settings that
select them are in docs/orchestration.md. Postgres or MySQL deployments need neither.
"""

from __future__ import annotations

SQLITE_BUSY_TIMEOUT_S = 60.0

# Two dicts: Airflow adds check_same_thread to the sync one in place.
SQLITE_CONNECT_ARGS: dict = {"timeout": SQLITE_BUSY_TIMEOUT_S}
SQLITE_CONNECT_ARGS_ASYNC: dict = {"timeout": SQLITE_BUSY_TIMEOUT_S}
