"""lum query / query_user_knowledge on hand-made user_knowledge partitions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from stages.bench.query_data import synthetic_knowledge
from stages.cli.app import main
from stages.pipeline.registry import run_with
from stages.query.lookup import query_many, query_user_knowledge
from stages.warehouse.facade import Warehouse

DIM = 4
CONDITIONS = ["category=Action", "category=Comedy", "category=Drama"]


def knowledge(ds: str, users: list[int], *, version: str, shift: float = 0.0) -> pa.Table:
    """users x CONDITIONS rows; embedding[0] encodes (user, condition) so tests can check values."""
    rows = [(u, c) for u in users for c in CONDITIONS]
    emb = np.zeros((len(rows), DIM), np.float32)
    emb[:, 0] = [u * 10 + i for u, c in rows for i in [CONDITIONS.index(c)]]
    emb[:, 1] = shift
    return pa.table({
        "ds": [ds] * len(rows),
        "user_id": pa.array([u for u, _ in rows], pa.int64()),
        "condition": [c for _, c in rows],
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), DIM),
        "model_version": [version] * len(rows),
        "history_len": pa.array([u % 7 for u, _ in rows], pa.int32()),
    })


@pytest.fixture
def kwh(warehouse) -> str:
    wh = Warehouse(warehouse)
    wh.write_partition("user_knowledge", knowledge("2000-01-01", [1, 2, 3], version="lum-1999-12-31"),
                       ds="2000-01-01")  # version 0
    wh.write_partition("user_knowledge", knowledge("2000-01-02", [1, 2, 3, 4], version="lum-2000-01-01"),
                       ds="2000-01-02")  # version 1
    return warehouse


def test_single_user_all_conditions(kwh):
    out = query_user_knowledge(kwh, user_ids=[2], ds="2000-01-01")
    assert out.num_rows == 3
    assert out.column("condition").to_pylist() == CONDITIONS
    assert set(out.column("ds").to_pylist()) == {"2000-01-01"}
    assert out.schema.field("embedding").type == pa.list_(pa.field("element", pa.float32()), DIM)
    assert [e[0] for e in out.column("embedding").to_pylist()] == [20.0, 21.0, 22.0]
    assert out.column("model_version").to_pylist() == ["lum-1999-12-31"] * 3


def test_newest_partition_by_default(kwh):
    out = query_user_knowledge(kwh, user_ids=[4])
    assert out.num_rows == 3 and set(out.column("ds").to_pylist()) == {"2000-01-02"}


def test_many_users_and_condition_filter(kwh):
    out = query_user_knowledge(kwh, user_ids=[3, 1, 99], ds="2000-01-02", conditions=["category=Comedy"])
    assert out.column("user_id").to_pylist() == [1, 3]
    assert [e[0] for e in out.column("embedding").to_pylist()] == [11.0, 31.0]


def test_unknown_user_is_empty(kwh):
    out = query_user_knowledge(kwh, user_ids=[12345], ds="2000-01-01")
    assert out.num_rows == 0 and "embedding" in out.column_names


def test_time_travel_by_version(kwh):
    wh = Warehouse(kwh)
    # Rewrite day 1 with other embeddings: version 2. Version 0 still shows the original rows.
    wh.write_partition("user_knowledge", knowledge("2000-01-01", [1, 2], version="lum-x", shift=5.0),
                       ds="2000-01-01")
    now = query_user_knowledge(kwh, user_ids=[2, 3], ds="2000-01-01")
    before = query_user_knowledge(kwh, user_ids=[2, 3], ds="2000-01-01", version=0)
    assert now.column("user_id").to_pylist() == [2, 2, 2]
    assert {e[1] for e in now.column("embedding").to_pylist()} == {5.0}
    assert before.column("user_id").to_pylist() == [2, 2, 2, 3, 3, 3]
    assert {e[1] for e in before.column("embedding").to_pylist()} == {0.0}
    # At version 0 day 2 did not exist yet: newest partition is day 1.
    assert set(query_user_knowledge(kwh, user_ids=[1], version=0).column("ds").to_pylist()) == {"2000-01-01"}


def test_reads_only_the_requested_partition(kwh):
    # Corrupt every data file of day 2: a query of day 1 must not open them.
    day2 = [p for p in Path(kwh, "user_knowledge").rglob("*.parquet") if "2000-01-02" in str(p)]
    assert day2
    for p in day2:
        p.write_bytes(b"not parquet")
    assert query_user_knowledge(kwh, user_ids=[1], ds="2000-01-01").num_rows == 3
    with pytest.raises(Exception):
        query_user_knowledge(kwh, user_ids=[1], ds="2000-01-02")


def test_a_day_needs_no_file_of_another_day(kwh, capsys):
    """Delete every data file of day 1 (the log still names them): day 2 reads by every way in still work."""
    day1 = [p for p in Path(kwh, "user_knowledge").rglob("*.parquet") if "ds=2000-01-01" in str(p)]
    assert day1
    for p in day1:
        p.unlink()
    assert query_user_knowledge(kwh, user_ids=[1, 4], ds="2000-01-02").num_rows == 6
    assert query_user_knowledge(kwh, user_ids=[1]).num_rows == 3  # the newest day, from the log alone
    assert query_many(kwh, pa.array([4, 1, 2], pa.int64()), ds="2000-01-02").num_rows == 9
    assert Warehouse(kwh).read("user_knowledge", ds="2000-01-02").num_rows == 12
    assert main(["query", "--warehouse", kwh, "--ds", "2000-01-02", "--user-id", "3"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"] == 3
    with pytest.raises(OSError):  # day 1 itself is gone
        query_user_knowledge(kwh, user_ids=[1], ds="2000-01-01")


def test_query_many_arrow_in_arrow_out(kwh):
    single = {u: query_user_knowledge(kwh, user_ids=[u], ds="2000-01-02") for u in (1, 2, 3, 4)}
    out = query_many(kwh, pa.table({"user_id": pa.array([3, 1, 3, 99, 4], pa.int64())}), ds="2000-01-02")
    assert out.column("user_id").to_pylist() == [1] * 3 + [3] * 3 + [4] * 3  # by user; duplicates once
    assert out.sort_by([("user_id", "ascending"), ("condition", "ascending")]).equals(
        pa.concat_tables([single[1], single[3], single[4]]).replace_schema_metadata(None))
    assert out.schema.field("embedding").type == pa.list_(pa.field("element", pa.float32()), DIM)
    assert query_many(kwh, np.array([2, 4], np.int32)).num_rows == 6  # numpy in, the newest day
    assert query_many(kwh, pa.chunked_array([[2], [4]]), ds="2000-01-02",
                      conditions=["category=Drama"]).column("user_id").to_pylist() == [2, 4]
    for ids in ([12345], []):  # no row: still the day's columns, the embedding D wide
        empty = query_many(kwh, ids, ds="2000-01-01")
        assert empty.num_rows == 0 and empty.schema.equals(out.schema, check_metadata=False)
    assert query_many(kwh, [2], version=0).column("model_version").to_pylist() == ["lum-1999-12-31"] * 3


@pytest.mark.parametrize("user_ids, kwargs, match", [
    (pa.table({"uid": [1]}), {}, "needs a user_id column"),
    (pa.array([1.5]), {}, "user_ids must be integers"),
    (pa.array([1, None], pa.int64()), {}, "without nulls"),
    (np.array([[1, 2]]), {}, "1-D array of integers"),
    (["1 OR 1=1"], {}, "1-D array of integers"),
    ([1], {"ds": "2000-03-01"}, "no partition ds=2000-03-01"),
    ([1], {"table": "events"}, "table must be one of"),
    ([1], {"table": "dlrm_training", "conditions": ["category=A"]}, "conditions apply to user_knowledge only"),
])
def test_query_many_bad_arguments(kwh, user_ids, kwargs, match):
    with pytest.raises(ValueError, match=match):
        query_many(kwh, user_ids, **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"user_ids": [1], "ds": "2000-1-1"}, "ds must be YYYY-MM-DD"),
    ({"user_ids": [1], "ds": "2000-02-30"}, "not a calendar day"),
    ({"user_ids": [1], "ds": "2000-03-01"}, "no partition ds=2000-03-01"),
    ({"user_ids": [], "ds": "2000-01-01"}, "user_ids"),
    ({"user_ids": ["1 OR 1=1"], "ds": "2000-01-01"}, "user_ids must be integers"),
    ({"user_ids": [1], "conditions": ["Comedy"]}, "feature=value"),
    ({"user_ids": [1], "version": 9}, "version must be 0..1"),
])
def test_bad_arguments(kwh, kwargs, match):
    with pytest.raises(ValueError, match=match):
        query_user_knowledge(kwh, **kwargs)


def test_missing_table(warehouse):
    with pytest.raises(ValueError, match="does not exist"):
        query_user_knowledge(warehouse, user_ids=[1])


def test_cli_table_json_unknown_user_and_bad_day(kwh, capsys):
    assert main(["query", "--warehouse", kwh, "--ds", "2000-01-01", "--user-id", "1", "--user-id", "2",
                 "--condition", "category=Drama"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].split()[:3] == ["ds", "user_id", "condition"]
    assert "(D=4)" in out[2] and out[2].split()[1] == "1"
    assert json.loads(out[-1])["rows"] == 2

    assert main(["query", "--warehouse", kwh, "--user-id", "3", "--format", "json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [json.loads(x) for x in lines[:-1]]
    assert len(rows) == 3 and rows[0]["ds"] == "2000-01-02" and len(rows[0]["embedding"]) == DIM
    assert json.loads(lines[-1])["rows"] == 3

    assert main(["query", "--warehouse", kwh, "--user-id", "777"]) == 0  # unknown user: empty, exit 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"] == 0

    assert main(["query", "--warehouse", kwh, "--ds", "2000/01/01", "--user-id", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lum: error:") and "YYYY-MM-DD" in err and len(err.splitlines()) == 1


def test_env_warehouse_is_used(kwh, capsys, monkeypatch):
    monkeypatch.setenv("LUM_WAREHOUSE", kwh)
    assert main(["query", "--user-id", "4"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"] == 3
    assert os.environ["LUM_WAREHOUSE"] == kwh


def test_bench_query_table_streams_in_user_chunks():
    """The bench's synthetic day comes in chunks of users (10M users never sit in memory at once): together they
    are every (odd user, condition) once, sorted, and a chunk's values do not depend on the chunk size."""
    chunks = list(synthetic_knowledge(1000, 4, 8, seed=0, ds="2000-12-30", chunk_users=300))
    assert [c.num_rows for c in chunks] == [1200, 1200, 1200, 400]
    ids = np.concatenate([c.column("user_id").to_numpy() for c in chunks])
    assert (np.diff(ids) >= 0).all() and set(ids.tolist()) == set(range(1, 2000, 2))
    assert len(set(zip(ids.tolist(), pa.concat_tables(chunks).column("condition").to_pylist()))) == 4000
    again = next(synthetic_knowledge(1000, 4, 8, seed=0, ds="2000-12-30", chunk_users=300))
    assert again.equals(chunks[0])


def test_bench_query_small(warehouse):
    """--quick sizes shrunk further: 3 days, day D in 2 hash shards (overlapping files), timed before and after
    the maintain stage clustered it."""
    report = run_with("bench.query", {"users": 3000, "lookups": 3, "row_group_rows": 1024, "file_rows": 2048,
                                      "shards": 2, "batch_users": 500, "batches": 2, "file_mb": 0}, quick=True,
                      warehouse=warehouse)
    kinds = ["single", "single_newest", "batch_100", "unknown", "many", "many_baseline"]
    assert [(r["phase"], r["lookup"]) for r in report["table"]] == [(p, k) for p in ("before", "after") for k in kinds]
    assert all(r["p50_ms"] > 0 and r["users_per_s"] > 0 for r in report["table"])
    assert report["config"]["days"] == 3 and report["config"]["conditions"] == 4  # the QUICK preset
    day, snapshot = report["files"]["before"]
    assert day == 6 and snapshot == 18  # 2 shards x 3 files of 2048 rows, and 3 days of them in the log
    assert report["maintain"]["rewrite"] == "cluster" and report["maintain"]["rows"] == 12_000
    assert report["files"]["after"] == (1, 3)  # every day re-linked to D's one clustered file
    summary = report["summary"]
    assert summary["users"] == 3000 and summary["days"] == 3
    assert {"single_p50_ms_before", "single_p50_ms_after", "many_users_per_s_before", "many_users_per_s_after",
            "target_p50_ms", "target_batch_users_s", "many_speedup_before", "many_speedup_after"} <= set(summary)
    assert os.listdir(warehouse) == []  # the bench writes into its own temporary warehouse
    shared = run_with("bench.query", {"users": 3000, "lookups": 2, "file_rows": 2048, "shards": 2, "batches": 1,
                                      "batch_users": 500, "maintain": False, "baseline": False}, quick=True,
                      warehouse=warehouse)
    assert shared["files"]["before"] == (2, 6)  # as infer stages by default: each shard's writes share a file
    with pytest.raises(ValueError, match="file_mb must be >= 0"):
        run_with("bench.query", {"file_mb": -1}, quick=True, warehouse=warehouse)
    with pytest.raises(ValueError, match="unknown bench.query option"):
        run_with("bench.query", {"userz": 1}, quick=True, warehouse=warehouse)
    with pytest.raises(ValueError, match="users must be >= 100"):
        run_with("bench.query", {"users": 99}, quick=True, warehouse=warehouse)
    with pytest.raises(ValueError, match="row_group_rows must be >= 1"):
        run_with("bench.query", {"row_group_rows": 0}, quick=True, warehouse=warehouse)
    with pytest.raises(ValueError, match="batch_users must be <= users"):
        run_with("bench.query", {"users": 1000, "batch_users": 2000}, quick=True, warehouse=warehouse)


def test_opens_only_files_whose_user_range_matches(warehouse):
    """Two files of one partition (users 1-3 and 4-6): corrupting the second must not affect user 2."""
    wh = Warehouse(warehouse)
    stager = wh.stage_partition("user_knowledge", ds="2000-01-01", run_id="t")
    stager.write(knowledge("2000-01-01", [1, 2, 3], version="v"))
    stager.write(knowledge("2000-01-01", [4, 5, 6], version="v"))
    stager.finish()
    wh.commit_staged("user_knowledge", ds="2000-01-01", run_id="t")
    second = Path(warehouse, "user_knowledge", stager.files[1]["path"])
    second.write_bytes(b"not parquet")
    assert query_user_knowledge(warehouse, user_ids=[2], ds="2000-01-01").num_rows == 3
    with pytest.raises(Exception):
        query_user_knowledge(warehouse, user_ids=[5], ds="2000-01-01")


def test_cli_summary_names_resolved_day_and_version(kwh, capsys):
    assert main(["query", "--warehouse", kwh, "--user-id", "424242"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rows"] == 0 and summary["ds"] == "2000-01-02" and summary["version"] == 1
    assert main(["query", "--warehouse", kwh, "--user-id", "1", "--version", "0"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["ds"] == "2000-01-01" and summary["version"] == 0 and summary["rows"] == 3
