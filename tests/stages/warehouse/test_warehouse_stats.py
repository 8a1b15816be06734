"""Delta file statistics: staged and Spark commits record min/max/nullCount from parquet footers, and
filtered reads open only the files those statistics allow (proved by deleting the other files)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from stages.query.lookup import query_user_knowledge  # point lookups prune on min/max.user_id too
from stages.warehouse.facade import Warehouse

UTC = dt.UTC
DAY = "2000-12-02"
PRIMITIVE = ("user_id", "item_id", "ts", "scenario", "rating", "event_idx", "label", "condition",
             "model_version", "history_len", "condition_logprob", "temperature")


def events(users: list[int], *, micros: int = 0) -> pa.Table:
    return pa.table({
        "user_id": pa.array(users, pa.int64()),
        "item_id": pa.array([100 + u for u in users], pa.int64()),
        "ts": pa.array([dt.datetime(2000, 12, 2, u % 24, u % 60, 7, micros, tzinfo=UTC) for u in users],
                       pa.timestamp("us", "UTC")),
        "scenario": [f"s{u % 3}" for u in users],
        "rating": pa.array([None if u % 3 == 0 else u / 4 for u in users], pa.float32()),
        "event_idx": pa.array(users, pa.int64()),
    })


def knowledge(users: list[int]) -> pa.Table:
    return pa.table({
        "user_id": pa.array(users, pa.int64()),
        "condition": [f"category=C{u % 2}" for u in users],
        "embedding": [[u / 2, -u / 4] for u in users],
        "model_version": [None if u % 2 else "lum-2000-12-01" for u in users],
        "history_len": pa.array(users, pa.int32()),
    })


def log_stats(table_dir: str) -> dict[str, dict]:
    """The ``stats`` JSON of every add action in the Delta log, by file path (latest add wins)."""
    out = {}
    for commit in sorted(Path(table_dir, "_delta_log").glob("*.json")):
        for line in commit.read_text().splitlines():
            action = json.loads(line)
            if "add" in action:
                out[action["add"]["path"]] = json.loads(action["add"]["stats"])
            if "remove" in action:
                out.pop(action["remove"]["path"], None)
    return out


def iso(value: dt.datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def expected_stats(path: Path) -> dict:
    """Reference stats of one data file computed from its rows (not its footer)."""
    data = pq.read_table(path)
    lo, hi, nulls = {}, {}, {}
    for name in data.column_names:
        if name not in PRIMITIVE:
            continue
        column = data.column(name)
        nulls[name] = column.null_count
        if column.null_count < len(column):
            bounds = pc.min_max(column)
            low, high = bounds["min"].as_py(), bounds["max"].as_py()
            if isinstance(low, dt.datetime):
                low, high = iso(low), iso(high)
            lo[name], hi[name] = low, high
    return {"numRecords": data.num_rows, "minValues": lo, "maxValues": hi, "nullCount": nulls}


def stage(wh: Warehouse, name: str, chunks: list[pa.Table], run_id: str = "r1") -> None:
    stager = wh.stage_partition(name, ds=DAY, run_id=run_id)
    for chunk in chunks:
        stager.write(chunk)
    stager.finish()
    wh.commit_staged(name, ds=DAY, run_id=run_id)


def test_staged_write_records_footer_stats(warehouse):
    wh = Warehouse(warehouse)
    stage(wh, "user_knowledge", [knowledge([5, 1, 3]), knowledge([20, 11])])
    stage(wh, "events", [events([4, 2, 9], micros=123456)])
    for name in ("user_knowledge", "events"):
        stats = log_stats(wh.table_uri(name))
        assert stats
        for rel, got in stats.items():
            assert got == expected_stats(Path(wh.table_uri(name), rel)), rel
            assert "embedding" not in got["minValues"] and "ds" not in got["nullCount"]
    knowledge_stats = sorted(log_stats(wh.table_uri("user_knowledge")).values(),
                             key=lambda s: s["minValues"]["user_id"])
    assert [s["minValues"]["user_id"] for s in knowledge_stats] == [1, 11]
    assert knowledge_stats[1]["nullCount"]["model_version"] == 1  # user 11: None
    (event_stats,) = log_stats(wh.table_uri("events")).values()
    assert event_stats["minValues"]["ts"].endswith(".123456Z")


def test_staged_stats_parse_like_delta_rs_own(tmp_path):
    """delta-rs reads our stats back into the same typed min/max as for a file it wrote itself."""
    ours, theirs = Warehouse(str(tmp_path / "a")), Warehouse(str(tmp_path / "b"))
    stage(ours, "events", [events([3, 7, 8])])
    theirs.write_partition("events", events([3, 7, 8]), ds=DAY)
    cols = [f"{kind}.{c}" for kind in ("min", "max", "null_count")
            for c in ("user_id", "item_id", "ts", "scenario", "rating", "event_idx")]
    a = pa.table(ours.delta_table("events").get_add_actions(flatten=True)).select(cols)
    b = pa.table(theirs.delta_table("events").get_add_actions(flatten=True)).select(cols)
    assert a.to_pylist() == b.to_pylist()


def test_spark_write_records_footer_stats(spark, warehouse):
    wh = Warehouse(warehouse)
    rows = events([1, 4, 6, 30, 31]).to_pylist()
    df = spark.createDataFrame(rows, "user_id long, item_id long, ts timestamp, scenario string, "
                                     "rating float, event_idx long")
    wh.write_spark_partition("events", df.repartition(2), ds=DAY, app_id="stats")
    stats = log_stats(wh.table_uri("events"))
    assert stats and sum(s["numRecords"] for s in stats.values()) == 5
    for rel, got in stats.items():
        assert rel.startswith("spark-") and "ds" not in got["minValues"]
        assert got == expected_stats(Path(wh.table_uri("events"), rel)), rel
    assert min(s["minValues"]["user_id"] for s in stats.values()) == 1
    assert max(s["maxValues"]["user_id"] for s in stats.values()) == 31


def test_filtered_read_opens_only_matching_files(warehouse):
    wh = Warehouse(warehouse)
    stage(wh, "user_knowledge", [knowledge([1, 2, 3, 4]), knowledge([100, 101, 102])])
    stats = log_stats(wh.table_uri("user_knowledge"))
    (high_file,) = [rel for rel, s in stats.items() if s["minValues"]["user_id"] == 100]
    Path(wh.table_uri("user_knowledge"), high_file).unlink()  # a read that opens it now fails
    got = wh.read("user_knowledge", filters=[("user_id", "in", [2, 4, 50])])
    assert sorted(got.column("user_id").to_pylist()) == [2, 4]
    assert wh.read("user_knowledge", ds=DAY, filters=[("user_id", "<=", 99)]).num_rows == 4
    assert wh.read("user_knowledge", filters=[("user_id", "==", 77)]).num_rows == 0
    with pytest.raises(ValueError, match=rf"data file {high_file} is missing"):  # the filter it may satisfy opens it
        wh.read("user_knowledge", filters=[("user_id", ">", 3)])
    assert query_user_knowledge(warehouse, user_ids=[3]).column("user_id").to_pylist() == [3]


def test_timestamp_filter_prunes_and_tolerates_ms_truncated_stats(warehouse):
    wh = Warehouse(warehouse)
    # delta-rs writes timestamp stats truncated to ms: the row at .123456 must still be found
    wh.write_partition("events", events([5], micros=123456), ds="2000-12-01")
    (row_ts,) = wh.read("events", ds="2000-12-01").column("ts").to_pylist()
    assert wh.read("events", filters=[("ts", ">=", row_ts)]).num_rows == 1
    assert wh.read("events", filters=[("ts", "==", row_ts)]).num_rows == 1
    # staged files of two time ranges: a ts filter opens only the later file
    stage(wh, "events", [events([1, 2]), events([20, 21])])
    stats = log_stats(wh.table_uri("events"))
    (early,) = [rel for rel, s in stats.items() if s["maxValues"]["user_id"] == 2]
    Path(wh.table_uri("events"), early).unlink()
    cutoff = dt.datetime(2000, 12, 2, 10, tzinfo=UTC)
    got = wh.read("events", ds=DAY, filters=[("ts", ">", cutoff)])
    assert sorted(got.column("user_id").to_pylist()) == [20, 21]
    assert wh.read("events", ds=DAY, filters=[("scenario", "==", "s0")]).column("user_id").to_pylist() == [21]


def test_all_null_column_file_skipped(warehouse):
    """A file whose column is all null (nullCount == numRecords, no min/max) matches no comparison."""
    wh = Warehouse(warehouse)
    stage(wh, "user_knowledge", [knowledge([1, 3, 5]), knowledge([2, 4])])  # odd users: no model_version
    stats = log_stats(wh.table_uri("user_knowledge"))
    (null_file,) = [rel for rel, s in stats.items() if s["minValues"]["user_id"] == 1]
    assert stats[null_file]["nullCount"]["model_version"] == 3
    assert "model_version" not in stats[null_file]["minValues"]
    Path(wh.table_uri("user_knowledge"), null_file).unlink()
    got = wh.read("user_knowledge", filters=[("model_version", "==", "lum-2000-12-01")])
    assert sorted(got.column("user_id").to_pylist()) == [2, 4]
