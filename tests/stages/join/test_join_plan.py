"""The point-in-time rule (stages.join.plan): the newest knowledge day both tables have, <= D - lag."""

from __future__ import annotations

import pyarrow as pa

from stages.core.dates import days_before
from stages.join.plan import choose_knowledge_ds, knowledge_days, pick_knowledge_ds
from stages.warehouse.facade import Warehouse

DAYS = ["2001-01-02", "2001-01-04", "2001-01-05"]


def test_knowledge_of_day_d_itself_is_never_used():
    assert pick_knowledge_ds(DAYS, DAYS, days_before("2001-01-05", 1)) == ("2001-01-04", None)
    assert pick_knowledge_ds(DAYS, DAYS, days_before("2001-01-05", 2)) == ("2001-01-02", None)
    assert pick_knowledge_ds(DAYS, DAYS, days_before("2001-01-02", 1)) == (None, "no_knowledge")


def test_tables_disagreeing_use_the_newest_common_day_or_none():
    users, items = ["2001-01-02", "2001-01-03"], ["2001-01-02"]
    assert pick_knowledge_ds(users, items, "2001-01-03") == ("2001-01-02", "common_partition")
    assert pick_knowledge_ds(["2001-01-03"], ["2001-01-02"], "2001-01-04") == (None, "no_knowledge")
    assert pick_knowledge_ds([], DAYS, "2001-01-09") == (None, "no_knowledge")


def test_choose_reads_the_warehouse_partitions(warehouse):
    wh = Warehouse(warehouse)
    assert knowledge_days(wh) == ([], [])
    assert choose_knowledge_ds(wh, "2001-01-09") == (None, "no_knowledge")
    item = pa.table({"item_id": pa.array([1], pa.int64()),
                     "embedding": pa.array([[0.5, 0.5]], pa.list_(pa.float32(), 2)), "model_version": ["m"]})
    user = pa.table({"user_id": pa.array([1], pa.int64()), "condition": ["category=A"],
                     "embedding": pa.array([[0.5, 0.5]], pa.list_(pa.float32(), 2)), "model_version": ["m"],
                     "history_len": pa.array([3], pa.int32())})
    for day in ("2001-01-02", "2001-01-04"):
        wh.write_partition("item_knowledge", item, ds=day)
    wh.write_partition("user_knowledge", user, ds="2001-01-02")
    wh.write_partition("user_knowledge", user, ds="2001-01-03")
    assert knowledge_days(wh) == (["2001-01-02", "2001-01-03"], ["2001-01-02", "2001-01-04"])
    assert choose_knowledge_ds(wh, "2001-01-04") == ("2001-01-02", "common_partition")
