"""Incremental user_sequences: day D from D-1's rows plus day D's events equals the full rebuild, and every
case where D-1 cannot be extended falls back (logged) or fails (unreadable D-1)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.core.hashing import bucket_of
from stages.sequences import stage as sequences
from stages.warehouse import buckets
from stages.warehouse.facade import Warehouse
from tests.conftest import tree_snapshot

UTC = dt.UTC
D1, D2, D3, D4 = "2003-03-01", "2003-03-02", "2003-03-03", "2003-03-04"  # D3 has no events
MIDNIGHT = dt.datetime(2003, 3, 2, tzinfo=UTC)  # the D1/D2 boundary


def _at(day: str, hour: int = 0, minute: int = 0, micro: int = 0) -> dt.datetime:
    return dt.datetime.fromisoformat(day).replace(hour=hour, minute=minute, microsecond=micro, tzinfo=UTC)


# (user, item, ts, scenario, rating, event_idx); event_idx restarts with each "file" (day) like separate ingests
EVENTS = [
    # user 1: more than max_len behaviours on D1 alone, more on D2 and D4 (equal ts on D4)
    *[(1, 10 + k, _at(D1, 8, k), "rating", 4.0, 100 + k) for k in range(5)],
    (1, 20, _at(D2, 9), "click", None, 3), (1, 21, _at(D2, 10), "rating", 2.0, 4),
    (1, 22, _at(D4, 7), "rating", 5.0, 9), (1, 23, _at(D4, 7), "rating", 1.0, 2), (1, 24, _at(D4, 7), "click", None, 5),
    # user 2: the last instant of D1, then equal timestamps at midnight starting D2 (tie-break by event_idx)
    (2, 30, MIDNIGHT - dt.timedelta(microseconds=1), "rating", 3.0, 200),
    (2, 31, MIDNIGHT, "rating", 4.0, 7), (2, 32, MIDNIGHT, "rating", 5.0, 1), (2, 33, MIDNIGHT, "click", None, 8),
    # user 3 first appears on D2; user 4 on D4; user 5 only on D1 (carried unchanged); item 99 is not in items
    (3, 10, _at(D2, 12), "rating", 1.0, 0), (3, 99, _at(D2, 12), "rating", 3.5, 6),
    (4, 11, _at(D4, 1), "click", None, 0), (4, 12, _at(D4, 1), "rating", 4.5, 1),
    (5, 13, _at(D1, 23), "rating", 2.5, 300),
]
COLUMNS = ["user_id", "item_id", "ts", "scenario", "rating", "event_idx"]


def _events() -> pa.Table:
    rows = list(zip(*EVENTS))
    table = pa.table({c: list(v) for c, v in zip(COLUMNS, rows)})
    ts = table.column("ts").cast(pa.timestamp("us", tz="UTC"))
    return table.set_column(2, "ts", ts).append_column("ds", pa.array([t.date().isoformat() for t in rows[2]]))


def _items(category_of_10: str = "a") -> pa.Table:
    ids = [10, 11, 12, 13, 14, 20, 21, 22, 23, 24, 30, 31, 32, 33]
    cats = [category_of_10] + ["b" if i % 2 else "c" for i in ids[1:]]
    return pa.table({"item_id": ids, "title": [None] * len(ids), "category": cats,
                     "categories": [[c] for c in cats]})


@pytest.fixture
def small_warehouse(warehouse) -> Warehouse:
    wh = Warehouse(warehouse)
    wh.write_table("items", _items())
    wh.write_full("events", _events())
    return wh


def _rows(wh: Warehouse, ds: str) -> pa.Table:
    return wh.read("user_sequences", ds=ds).sort_by("user_id").combine_chunks()


def _run(wh: Warehouse, ds: str, features=("category", "scenario"), **options) -> dict:
    cfg = sequences.Config(max_len=3, condition_features=features, **{"buckets": 4, **options})
    return sequences.run(cfg, ds=ds, warehouse=wh)


def _unrated(rows: pa.Table) -> int:
    return sum(c.endswith("liked=<unk>") for conds in rows.column("conditions").to_pylist() for c in conds)


@pytest.mark.slow
@pytest.mark.parametrize("features", [("category", "scenario"), ("category", "liked")])
def test_incremental_days_equal_the_full_rebuild(small_warehouse, caplog, features):
    wh = small_warehouse
    caplog.set_level(logging.INFO, logger="stages.sequences.stage")
    assert _run(wh, D1, features)["mode"] == "full"  # nothing to extend
    built, summaries = {}, {}
    for ds in (D2, D3, D4):
        summaries[ds] = _run(wh, ds, features)
        assert summaries[ds]["mode"] == "incremental", summaries[ds]["reason"]
        assert summaries[ds]["path"] == "per bucket"  # D-1's bucket files merged in Python tasks
        built[ds] = _rows(wh, ds)
    assert "incremental build (extends partition 2003-03-01)" in caplog.text
    for ds in (D2, D4):  # D3 (no events) is D2's rows, below
        incremental_layout = buckets.layout(wh, ds)
        full_summary = _run(wh, ds, features, full_rebuild=True)
        assert full_summary["mode"] == "full" and full_summary["path"] == "spark"
        full = _rows(wh, ds)
        assert full.equals(built[ds]), ds  # every column, every row (bucket included)
        assert sorted(buckets.layout(wh, ds).files) == sorted(incremental_layout.files)  # one file per bucket
        assert incremental_layout.reason is None and incremental_layout.buckets == 4
        for rel in incremental_layout.files.values():  # the conditions stay dictionary-encoded, as Spark writes
            chunk = pq.ParquetFile(Path(wh.table_uri("user_sequences"), rel)).metadata.row_group(0)
            leaf = [chunk.column(i) for i in range(chunk.num_columns)
                    if chunk.column(i).path_in_schema == "conditions.list.element"][0]
            assert {"RLE_DICTIONARY", "PLAIN_DICTIONARY"} & set(leaf.encodings), leaf.encodings
        assert full_summary.get("liked_unknown") == summaries[ds].get("liked_unknown")
    d2, d3, d4 = (built[d].to_pylist() for d in (D2, D3, D4))
    by_user = {r["user_id"]: r for r in d2}
    assert by_user[2]["item_ids"] == [32, 31, 33]  # equal ts at midnight in event_idx order, D1's last dropped
    assert by_user[1]["item_ids"] == [14, 20, 21] and by_user[1]["total_events"] == 7
    if features[1] == "scenario":
        assert "liked_unknown" not in summaries[D2]
        assert by_user[3]["conditions"] == ["category=a,scenario=rating", "category=<unk>,scenario=rating"]
    else:  # ratings 4.0, none (a click), 2.0; 1.0 and 3.5 against the default threshold 4.0
        assert by_user[1]["conditions"] == ["category=c,liked=yes", "category=c,liked=<unk>", "category=b,liked=no"]
        assert by_user[3]["conditions"] == ["category=a,liked=no", "category=<unk>,liked=no"]
        assert summaries[D2]["liked_unknown"] == _unrated(built[D2]) == 2  # users 1 and 2: one click each
        assert summaries[D4]["liked_unknown"] == _unrated(built[D4]) == 3
        assert "2 behaviour(s) have no rating: condition liked=<unk>" in caplog.text
    assert [r["user_id"] for r in d2] == [1, 2, 3, 5]
    assert [{**r, "ds": D2} for r in d3] == d2  # a day without events carries every row
    assert {r["user_id"]: r["item_ids"] for r in d4}[1] == [23, 24, 22]  # equal ts on D4: event_idx 2, 5, 9
    assert [r["user_id"] for r in d4] == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_a_previous_day_without_usable_buckets_is_extended_in_spark_to_the_same_rows(small_warehouse, caplog,
                                                                                    monkeypatch):
    wh = small_warehouse
    _run(wh, D1)
    assert _run(wh, D2)["path"] == "per bucket"
    merged = _rows(wh, D2)
    real_layout = buckets.layout

    def unusable(*args, **kwargs):  # as for a partition written before buckets, or rewritten by a compaction
        return dataclasses.replace(real_layout(*args, **kwargs), reason="files holding several buckets")

    monkeypatch.setattr("stages.sequences.stage.bucket_files.layout", unusable)
    caplog.set_level(logging.INFO, logger="stages.sequences.stage")
    summary = _run(wh, D2)
    assert (summary["mode"], summary["path"]) == ("incremental", "spark")
    assert "extending 2003-03-01 in Spark: files holding several buckets" in caplog.text
    assert _rows(wh, D2).equals(merged)


@pytest.mark.slow
def test_fallbacks_to_a_full_rebuild_are_logged(small_warehouse, caplog):
    wh = small_warehouse
    caplog.set_level(logging.INFO, logger="stages.sequences.stage")
    summary = _run(wh, D2)
    assert summary["mode"] == "full" and "no user_sequences partition 2003-03-01" in summary["reason"]
    assert "full build (no user_sequences partition 2003-03-01)" in caplog.text
    assert _run(wh, D3)["mode"] == "incremental"
    summary = sequences.run(sequences.Config(max_len=4, condition_features=("category", "scenario")), ds=D4,
                            warehouse=wh)
    assert summary["mode"] == "full" and "max_len=3" in summary["reason"]  # D3 was built with max_len=3
    summary = _run(wh, D4, ("category", "liked"))
    assert summary["mode"] == "full" and "conditions=category,scenario" in summary["reason"]
    summary = _run(wh, "2003-03-05", ("category", "liked"), liked_threshold=3.5)
    assert summary["mode"] == "full" and "liked_threshold=4.0, this run uses 3.5" in summary["reason"]
    assert _run(wh, "2003-03-06", ("category", "liked"), liked_threshold=3.5)["mode"] == "incremental"
    wh.write_table("items", _items(category_of_10="z"))  # item 10's category changes D2's conditions
    summary = _run(wh, D3)
    assert summary["mode"] == "full" and "changed the category of 1 item" in summary["reason"]
    wh.write_full("events", _events().filter(pa.compute.equal(_events().column("ds"), D2)), days=[D2])
    summary = _run(wh, D3)  # D2's events files were rewritten after D2 was built
    assert summary["mode"] == "full" and "events of days <= 2003-03-02 changed" in summary["reason"]


@pytest.mark.slow
def test_unreadable_previous_partition_is_an_error_unless_full_rebuild(small_warehouse):
    wh = small_warehouse
    _run(wh, D1)
    table_dir = Path(wh.table_uri("user_sequences"))
    victim = sorted(table_dir.rglob("*.parquet"))[0]
    victim.write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match="partition 2003-03-01 cannot be read.*full_rebuild=true") as info:
        _run(wh, D2)
    assert "\n" not in str(info.value)
    assert _run(wh, D2, full_rebuild=True)["mode"] == "full"


@pytest.mark.slow
def test_bucket_count_change_is_an_error_unless_full_rebuild(small_warehouse):
    wh = small_warehouse
    _run(wh, D1)
    before = tree_snapshot(wh.uri)
    with pytest.raises(ValueError) as info:
        _run(wh, D2, buckets=8)
    assert str(info.value) == ("user_sequences partition 2003-03-01 has buckets=4, this run uses buckets=8; "
                               "rebuild 2003-03-02 with --set full_rebuild=true to change the bucket count")
    assert tree_snapshot(wh.uri) == before  # nothing written
    assert _run(wh, D2, buckets=8, full_rebuild=True)["buckets"] == 8
    rows = _rows(wh, D2)
    assert rows.column("bucket").to_pylist() == bucket_of(rows.column("user_id").to_numpy(), 8).tolist()
    assert _run(wh, D3, buckets=8)["mode"] == "incremental"
