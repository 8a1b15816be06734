"""Streamed ingest: many small batches give the same tables as one batch and as a reference built here; a bad
value in a late batch commits nothing; items/users are merged; synthetic chunks are written as they come."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.cli import app as cli
from stages.ingest import staged, synthetic
from stages.ingest.tables import dlrm_samples_from_events, ingest
from stages.pipeline.registry import ingest as run_source
from stages.warehouse import keys
from stages.warehouse.facade import Warehouse
from tests.stages.ingest_helpers import canonical, tree_snapshot

UTC = dt.UTC
KEYS = {"events": ["user_id", "item_id", "ts", "scenario"], "items": ["item_id"], "users": ["user_id"],
        "dlrm_samples": ["user_id", "item_id", "ts"]}
N = 40


def _log() -> pa.Table:
    """N events over three days, not in time order; runs of equal timestamps; every fifth one implicit."""
    rng = np.random.default_rng(7)
    t0 = dt.datetime(2004, 5, 1, 20, tzinfo=UTC)
    ts = [t0 + dt.timedelta(hours=int(h)) for h in rng.integers(0, 40, N)]
    return pa.table({
        "user_id": pa.array(rng.integers(1, 9, N), pa.int64()),
        "item_id": pa.array(np.arange(N) % 13 + 100, pa.int64()),
        "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "scenario": ["click" if i % 5 == 0 else "rating" for i in range(N)],
        "rating": pa.array([None if i % 5 == 0 else float(i % 5 + 1) for i in range(N)], pa.float32()),
    })


def _reference(log: pa.Table) -> dict[str, pa.Table]:
    """What ingesting ``log`` into an empty warehouse must give, built without the ingest code."""
    days = [t.date().isoformat() for t in log.column("ts").to_pylist()]
    events = log.append_column("event_idx", pa.array(np.arange(log.num_rows), pa.int64())).append_column(
        "ds", pa.array(days))
    items = sorted(set(log.column("item_id").to_pylist()))
    users = sorted(set(log.column("user_id").to_pylist()))
    return {
        "events": events, "dlrm_samples": dlrm_samples_from_events(events),
        "items": pa.table({"item_id": pa.array(items, pa.int64()), "title": pa.nulls(len(items), pa.string()),
                           "category": ["unknown"] * len(items), "categories": [["unknown"]] * len(items)}),
        "users": pa.table({"user_id": pa.array(users, pa.int64()), "source_id": [str(u) for u in users],
                           "age": pa.nulls(len(users), pa.int32()), "gender": pa.nulls(len(users), pa.string()),
                           "occupation": pa.nulls(len(users), pa.string())}),
    }


def _write(log: pa.Table, path: Path) -> str:
    rows = log.to_pylist()
    if path.suffix == ".parquet":
        pq.write_table(log, path)
    elif path.suffix == ".csv":
        lines = [",".join(log.column_names)] + [
            ",".join("" if v is None else v.isoformat() if isinstance(v, dt.datetime) else str(v) for v in r.values())
            for r in rows]
        path.write_text("\n".join(lines) + "\n")
    else:
        path.write_text("".join(json.dumps({k: v.isoformat() if isinstance(v, dt.datetime) else v
                                            for k, v in r.items()}) + "\n" for r in rows))
    return str(path)


def _tables(path: str) -> dict[str, pa.Table]:
    wh = Warehouse(path)
    return {name: canonical(wh.read(name), keys) for name, keys in KEYS.items()}


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_small_batches_give_the_one_batch_tables_and_the_reference(suffix, tmp_path):
    log = _log()
    file = _write(log, tmp_path / f"log{suffix}")
    reference = {name: canonical(table, KEYS[name]) for name, table in _reference(log).items()}
    for batch_rows in (7, 1_000):
        path = str(tmp_path / f"wh-{batch_rows}")
        summary = run_source("events", {"path": file, "batch_rows": batch_rows}, warehouse=path)
        assert summary["events"] == N and summary["days"] == 3
        for name, table in _tables(path).items():
            want = reference[name].cast(table.schema)
            assert table.equals(want), (batch_rows, name)
    files = pa.table(Warehouse(str(tmp_path / "wh-7")).delta_table("events").get_add_actions(flatten=True))
    assert files.num_rows > 3  # 6 batches over 3 days: several staged files per day


def _csv(tmp_path: Path, rows: list[str]) -> str:
    path = tmp_path / "late.csv"
    path.write_text("\n".join(["user_id,item_id,ts,scenario,rating", *rows]) + "\n")
    return str(path)


def _good_rows(n: int) -> list[str]:
    return [f"{1 + i % 3},{200 + i},2004-05-0{1 + i % 2}T10:{i % 60:02d}:00Z,rating,{1 + i % 5}" for i in range(n)]


LATE = {  # row 26 (batch 7 of 4 rows) is bad
    "rating": ("1,999,2004-05-01T11:00:00Z,rating,great", r"batch 7 \(rows 24\.\.27\): column rating .*'great' at row 26"),
    "ts": ("1,999,yesterday,rating,4", r"batch 7 \(rows 24\.\.27\): column ts .*unparseable.* row 26: 'yesterday'"),
    "null": ("1,,2004-05-01T11:00:00Z,rating,4", r"batch 7 .*column item_id has 1 null value\(s\), first at row 26"),
    "duplicate across batches": ("1,200,2004-05-01T10:00:00Z,click,4",  # rated twice with row 0: same sample
                                 r"table dlrm_samples ds=2004-05-01 of this ingest: key \(user_id, item_id, ts\) "
                                 r"appears 2 times across the staged files: user_id=1, item_id=200"),
    "epoch unit": ("1,999,1083405600,rating,4", "ts.*unparseable"),  # ISO batches, then a number
}


@pytest.mark.parametrize("case", sorted(LATE))
def test_a_bad_value_in_a_late_batch_commits_nothing(case, tmp_path):
    row, pattern = LATE[case]
    path = str(tmp_path / "wh")
    run_source("events", {"path": _csv(tmp_path, _good_rows(5)), "batch_rows": 2}, warehouse=path)
    snap = tree_snapshot(path)
    rows = _good_rows(30)
    rows[26] = row
    with pytest.raises(ValueError, match=pattern) as info:
        run_source("events", {"path": _csv(tmp_path, rows), "batch_rows": 4}, warehouse=path)
    assert "\n" not in str(info.value)
    assert tree_snapshot(path) == snap


def test_a_duplicate_across_batches_is_found_when_the_key_check_runs_in_passes(tmp_path, monkeypatch):
    """A day with more keys than one pass holds is checked in user_id shares: the duplicate still meets itself."""
    monkeypatch.setattr(keys, "KEY_CHECK_ROWS", 4)  # 30 rows per day -> several passes
    path = str(tmp_path / "wh")
    rows = _good_rows(60)
    rows[57] = "1,200,2004-05-01T10:00:00Z,click,4"  # the sample of row 0 again, 14 batches later
    with pytest.raises(ValueError, match=r"dlrm_samples ds=2004-05-01 .* appears 2 times .* user_id=1, item_id=200"):
        run_source("events", {"path": _csv(tmp_path, rows), "batch_rows": 4}, warehouse=path)
    rows[57] = "1,999,2004-05-01T11:00:00Z,rating,4"  # unique: the same passes let it through
    summary = run_source("events", {"path": _csv(tmp_path, rows), "batch_rows": 4}, warehouse=path)
    assert summary["events"] == 60


def test_a_failed_first_ingest_leaves_no_folder(tmp_path, warehouse):
    rows = _good_rows(30)
    rows[29] = "1,3,2004-05-01T11:00:00Z,rating,great"
    with pytest.raises(ValueError, match="rating"):
        run_source("events", {"path": _csv(tmp_path, rows), "batch_rows": 4}, warehouse=warehouse)
    assert list(Path(warehouse).iterdir()) == []


def test_epoch_units_must_agree_across_batches(tmp_path, warehouse):
    rows = [f"1,{200 + i},{1083405600 + i},rating,4" for i in range(8)]
    rows[6] = "1,206,1083405600123,rating,4"  # milliseconds after a batch of seconds
    with pytest.raises(ValueError, match="batch 2 .*milliseconds after earlier batches in seconds"):
        run_source("events", {"path": _csv(tmp_path, rows), "batch_rows": 4}, warehouse=warehouse)


def test_merge_keeps_old_rows_and_updates_or_inserts_new_ones(warehouse):
    wh = Warehouse(warehouse)
    old = pa.table({"item_id": [1, 2], "title": ["a", "b"], "category": ["x", "y"], "categories": [["x"], ["y"]]})
    new = pa.table({"item_id": [2, 3], "title": ["B", "C"], "category": ["u", "v"], "categories": [["u"], ["v"]]})
    wh.merge_table("items", old)  # creates the table
    version = wh.merge_table("items", new, update=False)
    got = wh.read("items").sort_by("item_id")
    assert got.column("title").to_pylist() == ["a", "b", "C"]  # 2 kept, 3 inserted
    assert wh.merge_table("items", new, update=False) == version  # nothing new: no commit
    wh.merge_table("items", new)
    assert wh.read("items").sort_by("item_id").column("title").to_pylist() == ["a", "B", "C"]  # 2 updated


def test_events_file_merges_into_existing_dimensions(tmp_path, warehouse):
    wh = Warehouse(warehouse)
    wh.write_table("items", pa.table({"item_id": [200], "title": ["known"], "category": ["drama"],
                                      "categories": [["drama"]]}))
    run_source("events", {"path": _csv(tmp_path, _good_rows(6)), "batch_rows": 4}, warehouse=warehouse)
    items = wh.read("items").sort_by("item_id").to_pylist()
    assert items[0] == {"item_id": 200, "title": "known", "category": "drama", "categories": ["drama"]}
    assert [r["category"] for r in items[1:]] == ["unknown"] * 5


def test_synthetic_chunked_write_equals_the_in_memory_tables(tmp_path, monkeypatch):
    cfg = synthetic.Config(users=90, items=30, categories=4, days=3, seed=4, chunk_users=20)
    old = str(tmp_path / "in-memory")
    ingest("synthetic", synthetic.generate(cfg), Warehouse(old), days_only=False, started=0.0)
    monkeypatch.setattr(staged, "FILE_ROWS", 50)  # many staged files per day
    new = str(tmp_path / "chunked")
    synthetic.run(synthetic.Config(users=50, items=30, categories=4, days=9, seed=4), warehouse=new)
    summary = synthetic.run(cfg, warehouse=new)  # replaces a longer data set: its other days disappear
    assert summary["events"] == Warehouse(old).read("events").num_rows
    assert _tables(new) == _tables(old)
    assert Warehouse(new).partitions("events") == Warehouse(old).partitions("events")
    files = pa.table(Warehouse(new).delta_table("events").get_add_actions(flatten=True))
    assert files.num_rows > 2 * len(Warehouse(new).partitions("events"))  # chunks written as they came


def test_cli_sets_the_batch_size(tmp_path, warehouse, capsys):
    argv = ["ingest", "events", "--path", _csv(tmp_path, _good_rows(9)), "--set", "batch_rows=2",
            "--warehouse", warehouse]
    assert cli.main(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["events"] == 9
    assert cli.main([*argv[:-2], "--set", "batch_rows=0", "--warehouse", warehouse]) == 2
    assert "batch_rows must be >= 1" in capsys.readouterr().err
