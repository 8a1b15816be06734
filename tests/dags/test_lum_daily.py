"""DagBag integrity of dags/lum_daily.py: parses, settings, schedule semantics, no heavy imports."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys

from airflow.sdk import CronDataIntervalTimetable
from airflow.serialization.encoders import coerce_to_core_timetable
from airflow.timetables.base import DataInterval, TimeRestriction

DAGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "dags")

UTC = dt.UTC
HEAVY = ("torch", "pyspark", "deltalake", "pyarrow", "pandas", "numpy", "stages", "triton", "kernels")


def test_dagbag_has_no_import_errors_and_one_dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=DAGS)
    assert bag.import_errors == {}
    assert list(bag.dags) == ["lum_daily"]


def test_dag_settings(lum_dag):
    assert lum_dag.tags == {"lum", "recsys", "daily"}
    assert lum_dag.max_active_runs == 1
    assert lum_dag.catchup is False
    assert "CronDataIntervalTimetable" in lum_dag.doc_md and "backfill" in lum_dag.doc_md
    assert isinstance(lum_dag.timetable, CronDataIntervalTimetable)
    for task in lum_dag.tasks:
        assert task.retries == 2, task.task_id
        assert task.retry_exponential_backoff, task.task_id
        assert task.retry_delay == dt.timedelta(minutes=2)
        assert task.doc_md or task.doc, task.task_id  # the task docstring
    hours = {t.task_id: t.execution_timeout / dt.timedelta(hours=1) for t in lum_dag.tasks}
    assert hours == {"sequences": 1, "pretrain": 6, "infer": 4, "join": 2, "maintain": 2}  # a hung task frees lum_gpu


def test_task_graph_pools_and_assets(lum_dag):
    tasks = {t.task_id: t for t in lum_dag.tasks}
    assert set(tasks) == {"sequences", "pretrain", "infer", "join", "maintain"}
    assert tasks["sequences"].upstream_task_ids == set()
    assert tasks["pretrain"].upstream_task_ids == {"sequences"}
    assert tasks["infer"].upstream_task_ids == {"pretrain"}
    assert tasks["join"].upstream_task_ids == set()  # reads D-1's knowledge, never waits for today's
    assert tasks["maintain"].upstream_task_ids == {"infer", "join"}  # rewrites files of both outputs of day D
    assert tasks["maintain"].downstream_task_ids == set()
    order = [t.task_id for t in lum_dag.topological_sort()]
    assert order.index("maintain") == len(order) - 1 and set(order) == set(tasks)
    assert {t.pool for t in (tasks["pretrain"], tasks["infer"])} == {"lum_gpu"}
    assert {t.pool for t in (tasks["sequences"], tasks["join"], tasks["maintain"])} == {"default_pool"}
    outlets = {tid: {a.uri for a in t.outlets} for tid, t in tasks.items()}
    assert outlets["infer"] == {"lum://warehouse/user_knowledge", "lum://warehouse/item_knowledge"}
    assert outlets["sequences"] == {"lum://warehouse/user_sequences"}
    assert outlets["join"] == {"lum://warehouse/dlrm_training"}
    assert outlets["pretrain"] == {"lum://warehouse/models/lum"}
    assert outlets["maintain"] == set()  # no row changes: no asset event for other teams' DAGs


def test_run_for_day_d_covers_day_d_and_fires_after_it(lum_dag):
    """The scheduled run after the one for 1998-03-01 covers exactly 1998-03-02 and fires at 03-03 00:00."""
    previous = DataInterval(dt.datetime(1998, 3, 1, tzinfo=UTC), dt.datetime(1998, 3, 2, tzinfo=UTC))
    timetable = coerce_to_core_timetable(lum_dag.timetable)
    info = timetable.next_dagrun_info(
        last_automated_data_interval=previous,
        restriction=TimeRestriction(earliest=None, latest=None, catchup=True))
    assert info.data_interval.start == dt.datetime(1998, 3, 2, tzinfo=UTC)
    assert info.data_interval.end == dt.datetime(1998, 3, 3, tzinfo=UTC)
    assert info.logical_date == dt.datetime(1998, 3, 2, tzinfo=UTC)
    assert info.run_after == dt.datetime(1998, 3, 3, tzinfo=UTC)
    # A manual run (dag.test, `airflow dags trigger`) processes the last complete day before it.
    manual = timetable.infer_manual_data_interval(run_after=dt.datetime(1998, 3, 3, 7, 30, tzinfo=UTC))
    assert manual.start == dt.datetime(1998, 3, 2, tzinfo=UTC)


def test_ds_of_data_interval_start():
    from stages.pipeline.daily import ds_of

    assert ds_of(dt.datetime(1998, 3, 2, tzinfo=UTC)) == "1998-03-02"
    assert ds_of(dt.datetime(1998, 3, 2, 23, 0, tzinfo=dt.timezone(dt.timedelta(hours=-2)))) == "1998-03-03"
    assert ds_of("1998-03-02T00:00:00+00:00") == "1998-03-02"


def test_parsing_the_dag_imports_nothing_heavy(tmp_path):
    """Parse the DAG folder in a fresh interpreter; no heavy module may be imported by parsing."""
    code = (
        "import json, sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"before = set(sys.modules)\n"
        f"bag = DagBag(dag_folder={DAGS!r})\n"
        "assert not bag.import_errors, bag.import_errors\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {list(HEAVY)!r})))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=180,
                         check=True)
    heavy = json.loads(out.stdout.strip().splitlines()[-1])
    assert heavy == [], heavy


def test_dag_file_has_no_top_level_project_imports():
    source = open(os.path.join(DAGS, "lum_daily.py")).read()
    top_level = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert all(line.split()[1].split(".")[0] in ("__future__", "datetime", "os", "airflow") for line in top_level), top_level
