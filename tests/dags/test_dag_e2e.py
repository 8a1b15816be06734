"""The real lum_daily DAG through ``dag.test`` over two consecutive ML-100K days (tiny model config).

Asserts, for every table the DAG writes, which partitions exist and how many rows each holds,
against counts computed independently from the input tables. The first day has no knowledge of the day
before it, so its join fails at once (a contract error, not retried); the second day's join reads the first
day's knowledge.
"""

from __future__ import annotations

import datetime as dt

import pyarrow.compute as pc
import pytest

from tests.dags.conftest import TINY_CONFIG

DAYS = ("1998-03-10", "1998-03-11")


def logical_date_for(ds: str) -> dt.datetime:
    """dag.test infers the data interval as the day before ``logical_date``: pass D+1 00:00 to process D."""
    return dt.datetime.fromisoformat(ds).replace(tzinfo=dt.UTC) + dt.timedelta(days=1)


@pytest.mark.slow
def test_dag_test_two_days(airflow_db, lum_dag, ml100k_warehouse, copy_warehouse, monkeypatch):
    from stages.model import store as model_store
    from stages.warehouse.facade import Warehouse

    wh_path = copy_warehouse(ml100k_warehouse)
    monkeypatch.setenv("LUM_WAREHOUSE", wh_path)
    monkeypatch.setenv("LUM_CONFIG", TINY_CONFIG)
    for ds in DAYS:
        run = lum_dag.test(logical_date=logical_date_for(ds))
        assert run.data_interval_start.date().isoformat() == ds
        states = {ti.task_id: (ti.state, ti.try_number) for ti in run.get_task_instances()}
        if ds == DAYS[0]:  # no knowledge of the day before: join fails at once (a contract error, no retry)
            assert run.state == "failed" and states.pop("join") == ("failed", 1)
            assert states.pop("maintain")[0] == "upstream_failed"
        else:
            assert run.state == "success", ds
        assert states == {t: ("success", 1) for t in ("sequences", "pretrain", "infer", "join", "maintain")
                          if t in states}

    wh = Warehouse(wh_path)
    for name in ("user_sequences", "user_knowledge", "item_knowledge"):
        assert wh.partitions(name) == list(DAYS), name
    assert wh.partitions("dlrm_training") == [DAYS[1]]
    for name in ("user_sequences", "user_knowledge", "item_knowledge", "dlrm_training"):  # maintain ran for day 2
        assert wh.table_metadata(name)["lum.maintained_through"] == DAYS[1], name
    assert model_store.latest_version(wh_path, through=DAYS[1]) == f"lum-{DAYS[1]}"
    assert model_store.latest_version(wh_path, through=DAYS[0]) == f"lum-{DAYS[0]}"

    events = wh.read("events", end=DAYS[1], columns=["user_id", "ds"])
    items = wh.read("items", columns=["item_id"]).num_rows
    for ds in DAYS:
        users = pc.count_distinct(events.filter(pc.less_equal(events.column("ds"), ds)).column("user_id")).as_py()
        seqs = wh.read("user_sequences", ds=ds)
        assert seqs.num_rows == users  # one row per user with any behaviour up to D
        uk = wh.read("user_knowledge", ds=ds)
        uk_users = pc.count_distinct(uk.column("user_id")).as_py()
        assert uk_users == users
        assert users <= uk.num_rows <= 3 * users  # tiny config: the top-3 conditions per user
        assert set(uk.column("model_version").to_pylist()) == {f"lum-{ds}"}
        assert wh.read("item_knowledge", ds=ds).num_rows == items
    samples = wh.read("dlrm_samples", ds=DAYS[1]).num_rows
    second = wh.read("dlrm_training", ds=DAYS[1])
    assert samples > 0 and second.num_rows == samples  # every sample keeps its row
    used = set(second.column("lum_knowledge_ds").drop_null().to_pylist())
    assert used == {DAYS[0]}  # day 2 joins day 1's knowledge, never its own
