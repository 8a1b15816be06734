"""`airflow standalone` + `airflow backfill create` over two days with the real DAG and stages (slow).

The scheduler runs in its own process group (setsid) with its own AIRFLOW_HOME and SQLite DB,
parallelism 2, DAGs unpaused at creation, and LUM_DAG_END_DATE bounding the schedule so it creates
no run of its own for "yesterday" (only the backfill's runs exist). It is stopped by process group id.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.dags.conftest import DAGS, TINY_CONFIG

DAYS = ("1998-03-20", "1998-03-21")
HEALTH_TIMEOUT_S = 240  # standalone is healthy in 12-20 s on an idle machine (ENV.md); the box is shared
RUNS_TIMEOUT_S = 1200  # two days of four real tasks, each a fresh process (Spark starts twice per day)


def _airflow(env: dict, *args: str, timeout: float = 180, retries: int = 0) -> subprocess.CompletedProcess:
    """Run one `airflow` CLI command; retry it when SQLite was locked past the busy timeout."""
    cmd = [str(Path(sys.executable).with_name("airflow")), *args]
    for _ in range(retries + 1):
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if out.returncode == 0 or "database is locked" not in out.stderr:
            break
        time.sleep(5)  # Airflow rolls back (and for backfills deletes) what a lock error half-wrote
    return out


def _runs(env: dict) -> list[dict]:
    out = _airflow(env, "dags", "list-runs", "lum_daily", "--output", "json")
    if out.returncode != 0:
        return []
    lines = [line for line in out.stdout.splitlines() if line.startswith(("[{", "[]"))]  # skip warnings
    return json.loads(lines[-1]) if lines else []


@pytest.mark.slow
def test_backfill_create_runs_two_days(tmp_path, ml100k_warehouse, copy_warehouse):
    from stages.warehouse.facade import Warehouse

    home = tmp_path / "airflow"
    home.mkdir()
    wh = copy_warehouse(ml100k_warehouse)
    config = tmp_path / "lum.toml"  # the first day of an empty warehouse has no knowledge of the day before
    config.write_text(Path(TINY_CONFIG).read_text() + "\n[join]\nallow_stale_knowledge = true\n")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__DAGS_FOLDER": DAGS,
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        # scheduler, dag processor, api server and the CLI share one SQLite file: wait for its lock
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": "stages.pipeline.airflow_db.SQLITE_CONNECT_ARGS",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC": "stages.pipeline.airflow_db.SQLITE_CONNECT_ARGS_ASYNC",
        "LUM_WAREHOUSE": wh,
        "LUM_CONFIG": str(config),
        "LUM_DAG_END_DATE": DAYS[-1],
        "PYTHONPATH": os.pathsep.join([str(Path(DAGS).parent), os.environ.get("PYTHONPATH", "")]),
        # standalone starts its components as `airflow ...` subprocesses found on PATH: the venv's bin
        # must be there even when pytest runs as `.venv/bin/python -m pytest` without an activated venv.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    log = open(tmp_path / "standalone.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("airflow")), "standalone"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + HEALTH_TIMEOUT_S
        while time.time() < deadline:  # the DAG is serialized once the dag processor has parsed it
            listed = _airflow(env, "dags", "list", "--output", "json")
            if listed.returncode == 0 and "lum_daily" in listed.stdout:
                break
            assert proc.poll() is None, (tmp_path / "standalone.log").read_text()[-3000:]
            time.sleep(5)
        else:
            pytest.fail("lum_daily was not parsed by airflow standalone in time")
        pool = _airflow(env, "pools", "set", "lum_gpu", "1", "one slot per GPU", retries=2)
        assert pool.returncode == 0, pool.stderr[-2000:]
        created = _airflow(env, "backfill", "create", "--dag-id", "lum_daily", "--from-date", DAYS[0],
                           "--to-date", DAYS[-1], "--max-active-runs", "1", retries=2)
        assert created.returncode == 0, created.stderr[-2000:]
        deadline = time.time() + RUNS_TIMEOUT_S
        states: dict[str, str] = {}
        while time.time() < deadline:
            runs = _runs(env)
            states = {r["logical_date"][:10]: r["state"] for r in runs}
            if len(states) >= 2 and all(s in ("success", "failed") for s in states.values()):
                break
            assert proc.poll() is None, (tmp_path / "standalone.log").read_text()[-3000:]
            time.sleep(10)
        assert states == {DAYS[0]: "success", DAYS[1]: "success"}, states
        assert all(r["run_id"].startswith("backfill__") for r in runs), runs  # no scheduled run of its own
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()
    warehouse = Warehouse(wh)
    for name in ("user_sequences", "user_knowledge", "item_knowledge", "dlrm_training"):
        assert warehouse.partitions(name) == list(DAYS), name
