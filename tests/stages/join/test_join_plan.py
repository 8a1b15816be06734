"""The point-in-time rule (stages.join.plan): D - lag's knowledge, or (when allowed) the newest day both
tables have <= D - lag."""

from __future__ import annotations

import pyarrow as pa
import pytest

from stages.core.dates import days_before
from stages.join.plan import knowledge_days, knowledge_lag, pick_knowledge_ds, resolve_knowledge, stale_knowledge
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


def test_only_the_knowledge_of_d_minus_lag_is_fresh():
    assert stale_knowledge("2001-01-05", 1, "2001-01-04", DAYS, DAYS) is None
    problem = stale_knowledge("2001-01-04", 1, "2001-01-02", DAYS, DAYS)
    assert "needs the knowledge of 2001-01-03" in problem and "user_knowledge and item_knowledge" in problem
    assert "would use the knowledge of 2001-01-02" in problem
    assert "no knowledge at all" in stale_knowledge("2001-01-02", 1, None, DAYS, DAYS)
    assert knowledge_lag("2001-01-05", "2001-01-02") == 3 and knowledge_lag("2001-01-05", None) is None


def test_resolve_reads_the_warehouse_partitions(warehouse):
    wh = Warehouse(warehouse)
    assert knowledge_days(wh) == ([], [])
    with pytest.raises(ValueError, match="needs the knowledge of 2001-01-09"):
        resolve_knowledge(wh, "2001-01-10", 1, allow_stale=False)
    assert resolve_knowledge(wh, "2001-01-10", 1, allow_stale=True) == (None, "no_knowledge")
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
    assert resolve_knowledge(wh, "2001-01-05", 1, allow_stale=True) == ("2001-01-02", "common_partition")
    with pytest.raises(ValueError, match="2001-01-04 .*which user_knowledge does not have"):
        resolve_knowledge(wh, "2001-01-05", 1, allow_stale=False)
    assert resolve_knowledge(wh, "2001-01-03", 1, allow_stale=False) == ("2001-01-02", None)
