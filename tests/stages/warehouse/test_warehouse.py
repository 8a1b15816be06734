"""stages.warehouse.facade: validated, atomic, idempotent partition writes; pruned reads; time travel."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from schemas.dlrm_training import CONDITIONS_KEY, decode_conditions, encode_conditions
from stages.warehouse.facade import Warehouse

UTC = dt.UTC


def events_of(day: str, users: list[int], rating: float = 4.0) -> pa.Table:
    """One event per user on ``day`` (no ds column: write_partition fills it)."""
    n = len(users)
    d = dt.date.fromisoformat(day)
    return pa.table({
        "user_id": pa.array(users, pa.int64()),
        "item_id": pa.array([100 + u for u in users], pa.int64()),
        "ts": pa.array([dt.datetime(d.year, d.month, d.day, 3, tzinfo=UTC)] * n, pa.timestamp("us", "UTC")),
        "scenario": ["rating"] * n,
        "rating": pa.array([rating] * n, pa.float32()),
        "event_idx": pa.array(users, pa.int64()),
    })


def rows(table: pa.Table) -> list[dict]:
    return sorted(table.to_pylist(), key=lambda r: (r["ds"], r["user_id"]))


def tree(root: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


@pytest.fixture
def wh(warehouse) -> Warehouse:
    w = Warehouse(warehouse)
    w.write_partition("events", events_of("2000-12-01", [1, 2, 3]), ds="2000-12-01")
    w.write_partition("events", events_of("2000-12-02", [1, 4]), ds="2000-12-02")
    w.write_partition("events", events_of("2000-12-03", [5]), ds="2000-12-03")
    return w


def test_write_partition_twice_leaves_the_same_rows(wh):
    before = rows(wh.read("events"))
    v1 = wh.version("events")
    v2 = wh.write_partition("events", events_of("2000-12-02", [1, 4]), ds="2000-12-02")
    assert v2 == v1 + 1
    assert rows(wh.read("events")) == before
    assert wh.read("events", ds="2000-12-02").num_rows == 2


def test_write_partition_replaces_only_that_day(wh):
    other = rows(wh.read("events", ds="2000-12-01"))
    wh.write_partition("events", events_of("2000-12-02", [7, 8, 9], rating=1.0), ds="2000-12-02")
    got = wh.read("events", ds="2000-12-02")
    assert sorted(got.column("user_id").to_pylist()) == [7, 8, 9]
    assert set(got.column("rating").to_pylist()) == {1.0}
    assert rows(wh.read("events", ds="2000-12-01")) == other


def test_invalid_write_leaves_warehouse_byte_for_byte_unchanged(wh):
    before = tree(wh.uri)
    bad = events_of("2000-12-02", [1, 1])  # duplicate key
    with pytest.raises(ValueError, match="duplicated"):
        wh.write_partition("events", bad, ds="2000-12-02")
    outside = events_of("2000-12-02", [1]).append_column("ds", pa.array(["2000-12-03"]))
    with pytest.raises(ValueError, match="outside partition"):
        wh.write_partition("events", outside, ds="2000-12-02")
    assert tree(wh.uri) == before


def test_read_restores_ds_and_schema(wh):
    got = wh.read("events")
    assert got.num_rows == 6
    assert got.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert sorted(set(got.column("ds").to_pylist())) == ["2000-12-01", "2000-12-02", "2000-12-03"]
    assert wh.partitions("events") == ["2000-12-01", "2000-12-02", "2000-12-03"]


def test_read_range_columns_and_filters(wh):
    got = wh.read("events", start="2000-12-02", end="2000-12-03", columns=["user_id", "ds"])
    assert got.column_names == ["user_id", "ds"]
    assert sorted(zip(got.column("ds").to_pylist(), got.column("user_id").to_pylist())) == [
        ("2000-12-02", 1), ("2000-12-02", 4), ("2000-12-03", 5)]
    got = wh.read("events", filters=[("user_id", "in", [1, 5]), ("ds", "<=", "2000-12-02")])
    assert sorted(got.column("ds").to_pylist()) == ["2000-12-01", "2000-12-02"]
    assert wh.read("events", filters=[("user_id", ">", 3)]).num_rows == 2
    with pytest.raises(ValueError, match="unknown column"):
        wh.read("events", filters=[("nope", "==", 1)])
    with pytest.raises(ValueError, match="op must be"):
        wh.read("events", filters=[("user_id", "~", 1)])


def test_read_of_one_day_opens_only_its_files(wh):
    """Pruning: delete another day's data file on disk; reading ds must not notice."""
    table = DeltaTable(wh.table_uri("events"))
    for path in table.file_uris(file_pruning_predicate=[("ds", "=", "2000-12-01")]):
        os.remove(path)
    assert sorted(wh.read("events", ds="2000-12-02").column("user_id").to_pylist()) == [1, 4]
    assert wh.read("events", start="2000-12-02").num_rows == 3
    with pytest.raises(Exception):
        wh.read("events")  # the full scan does open the deleted file


def test_time_travel(wh):
    v_before = wh.version("events")
    wh.write_partition("events", events_of("2000-12-01", [42]), ds="2000-12-01")
    assert wh.read("events", ds="2000-12-01").column("user_id").to_pylist() == [42]
    old = wh.read("events", ds="2000-12-01", version=v_before)
    assert sorted(old.column("user_id").to_pylist()) == [1, 2, 3]
    assert wh.partitions("events", version=0) == ["2000-12-01"]
    with pytest.raises(ValueError, match="version must be"):
        wh.read("events", version=99)


def test_latest_partition(wh):
    assert wh.latest_partition("events") == "2000-12-03"
    assert wh.latest_partition("events", before="2000-12-03") == "2000-12-02"
    assert wh.latest_partition("events", at_or_before="2000-12-02") == "2000-12-02"
    assert wh.latest_partition("events", before="2000-12-01") is None
    assert wh.latest_partition("user_knowledge", before="2000-12-03") is None


def test_missing_table_and_bad_names(warehouse):
    wh = Warehouse(warehouse)
    assert not wh.exists("events") and wh.version("events") is None and wh.partitions("events") == []
    with pytest.raises(ValueError, match="does not exist"):
        wh.read("events")
    with pytest.raises(ValueError, match="table name"):
        wh.table_uri("../evil")
    with pytest.raises(ValueError, match="unknown table"):
        wh.write_partition("nope", events_of("2000-12-01", [1]), ds="2000-12-01")


def test_write_table_unpartitioned(warehouse):
    wh = Warehouse(warehouse)
    items = pa.table({"item_id": [1, 2], "title": ["a", "b"], "category": ["X", "Y"],
                      "categories": [["X"], ["Y", "X"]]})
    wh.write_table("items", items)
    wh.write_table("items", items)
    assert wh.read("items").sort_by("item_id").to_pylist() == items.cast(wh.read("items").schema).to_pylist()
    assert wh.version("items") == 1
    with pytest.raises(ValueError, match="not partitioned"):
        wh.write_partition("items", items, ds="2000-12-01")
    with pytest.raises(ValueError, match="use write_partition"):
        wh.write_table("events", events_of("2000-12-01", [1]))


def test_table_metadata_stores_condition_order(warehouse):
    wh = Warehouse(warehouse)
    conds = ["category=Comedy", "category=Drama,scenario=rating"]
    table = pa.table({"user_id": [1], "condition": ["category=Comedy"], "embedding": [[0.5, 0.25]],
                      "model_version": ["lum-2000-12-01"], "history_len": [3]})
    meta = {CONDITIONS_KEY: encode_conditions(conds)}
    wh.write_partition("user_knowledge", table, ds="2000-12-02", metadata=meta)
    assert decode_conditions(wh.table_metadata("user_knowledge")[CONDITIONS_KEY]) == conds
    version = wh.version("user_knowledge")
    wh.write_partition("user_knowledge", table, ds="2000-12-02", metadata=meta)
    assert wh.version("user_knowledge") == version + 1  # the data commit only: metadata unchanged
    assert wh.history("user_knowledge")[0][CONDITIONS_KEY] == meta[CONDITIONS_KEY]
    got = wh.read("user_knowledge")
    assert got.schema.field("embedding").type == pa.list_(pa.float32(), 2)
    assert got.column("embedding").to_pylist() == [[0.5, 0.25]]


def test_history_newest_first(wh):
    hist = wh.history("events")
    assert [h["version"] for h in hist] == [2, 1, 0]
    assert all(h["operation"] == "WRITE" for h in hist)


def test_write_full_one_commit_for_many_days(warehouse):
    wh = Warehouse(warehouse)
    both = pa.concat_tables([
        events_of("2000-12-01", [1, 2]).append_column("ds", pa.array(["2000-12-01"] * 2)),
        events_of("2000-12-02", [3]).append_column("ds", pa.array(["2000-12-02"])),
    ])
    assert wh.write_full("events", both) == 0
    assert wh.partitions("events") == ["2000-12-01", "2000-12-02"]
    wh.write_full("events", events_of("2000-12-02", [4]).append_column("ds", pa.array(["2000-12-02"])),
                  days=["2000-12-02"])
    assert sorted(wh.read("events").column("user_id").to_pylist()) == [1, 2, 4]
    with pytest.raises(Exception):  # delta-rs refuses rows outside the replaced days
        wh.write_full("events", both, days=["2000-12-02"])
    assert wh.version("events") == 1
