"""Connection arguments for Airflow's SQLite metadata DB (the `airflow standalone` default).

SQLite lets one writer in at a time; Python's sqlite3 gives up after 5 s with "database is locked".
On a busy 2-core machine the scheduler, the dag processor, the API server and a CLI command such as
`airflow backfill create` can hold the write lock longer than that. Point Airflow at these dicts to
wait up to 60 s instead:

    export AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS=stages.pipeline.airflow_db.SQLITE_CONNECT_ARGS
    export AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC=stages.pipeline.airflow_db.SQLITE_CONNECT_ARGS_ASYNC

Postgres or MySQL (any production deployment) needs neither.
"""

from __future__ import annotations

SQLITE_BUSY_TIMEOUT_S = 60.0

# Two dicts: Airflow adds check_same_thread to the sync one in place.
SQLITE_CONNECT_ARGS: dict = {"timeout": SQLITE_BUSY_TIMEOUT_S}
SQLITE_CONNECT_ARGS_ASYNC: dict = {"timeout": SQLITE_BUSY_TIMEOUT_S}
