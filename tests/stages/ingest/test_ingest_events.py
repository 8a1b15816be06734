"""``lum ingest events --path FILE``: parquet and CSV logs, dimension extension, and every bad input."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.cli import app as cli
from stages.ingest.events import parse_ts
from stages.pipeline.registry import ingest as run_source
from stages.warehouse.facade import Warehouse
from tests.stages.ingest_helpers import canonical, tree_snapshot

UTC = dt.UTC
KEYS = {"events": ["user_id", "item_id", "ts", "scenario"], "items": ["item_id"], "users": ["user_id"],
        "dlrm_samples": ["user_id", "item_id", "ts"]}


def _log() -> pa.Table:
    """Six events over two days; two share a timestamp; one has no rating (implicit feedback)."""
    t0 = dt.datetime(2004, 5, 1, 22, 30, tzinfo=UTC)
    return pa.table({
        "user_id": pa.array([7, 7, 7, 8, 8, 9], pa.int64()),
        "item_id": pa.array([5001, 5002, 5003, 5001, 5004, 5002], pa.int64()),
        "ts": pa.array([t0, t0, t0 + dt.timedelta(hours=2), t0 + dt.timedelta(minutes=5),
                        t0 + dt.timedelta(hours=3), t0 + dt.timedelta(minutes=1)],
                       pa.timestamp("us", tz="UTC")),
        "scenario": ["rating", "rating", "rating", "rating", "click", "rating"],
        "rating": pa.array([5.0, 2.0, 4.0, 3.0, None, 4.5], pa.float32()),
    })


def _write_csv(path, header: str, rows: list[str]) -> str:
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


def _check_log_ingested(wh: Warehouse) -> None:
    events = wh.read("events").sort_by([("ts", "ascending"), ("event_idx", "ascending")])
    assert events.num_rows == 6
    assert wh.partitions("events") == ["2004-05-01", "2004-05-02"]
    rows = events.to_pylist()
    # equal timestamps keep file order
    assert [(r["user_id"], r["item_id"]) for r in rows[:2]] == [(7, 5001), (7, 5002)]
    assert all(r["ds"] == r["ts"].astimezone(UTC).date().isoformat() for r in rows)
    samples = wh.read("dlrm_samples")
    assert samples.num_rows == 5  # the click has no rating, so no sample
    assert sorted(samples.column("label").to_pylist()) == [0, 0, 1, 1, 1]
    assert sorted(wh.read("items").column("item_id").to_pylist()) == [5001, 5002, 5003, 5004]
    assert sorted(wh.read("users").column("user_id").to_pylist()) == [7, 8, 9]


def test_parquet_log(tmp_path, warehouse):
    path = tmp_path / "log.parquet"
    pq.write_table(_log(), path)
    summary = run_source("events", {"path": str(path)}, warehouse=warehouse)
    assert summary["events"] == 6 and summary["days"] == 2
    _check_log_ingested(Warehouse(warehouse))


def test_csv_log_with_iso_timestamps_and_offsets(tmp_path, warehouse):
    log = _log()
    iso = [t.isoformat() for t in log.column("ts").to_pylist()]
    iso[3] = log.column("ts")[3].as_py().astimezone(dt.timezone(dt.timedelta(hours=-4))).isoformat()
    iso[5] = log.column("ts")[5].as_py().strftime("%Y-%m-%d %H:%M:%S")  # no offset means UTC
    rows = [f"{u},{i},{t},{s},{'' if r is None else r}" for u, i, t, s, r in zip(
        log.column("user_id").to_pylist(), log.column("item_id").to_pylist(), iso,
        log.column("scenario").to_pylist(), log.column("rating").to_pylist())]
    path = _write_csv(tmp_path / "log.csv", "user_id,item_id,ts,scenario,rating", rows)
    run_source("events", {"path": path}, warehouse=warehouse)
    _check_log_ingested(Warehouse(warehouse))
    assert Warehouse(warehouse).read("events").sort_by("ts").column("ts").to_pylist() == sorted(
        log.column("ts").to_pylist())


def test_csv_log_with_epoch_seconds(tmp_path, warehouse):
    log = _log()
    rows = [f"{u},{i},{int(t.timestamp())},{s},{'' if r is None else r}" for u, i, t, s, r in zip(
        log.column("user_id").to_pylist(), log.column("item_id").to_pylist(), log.column("ts").to_pylist(),
        log.column("scenario").to_pylist(), log.column("rating").to_pylist())]
    path = _write_csv(tmp_path / "log.csv", "user_id,item_id,ts,scenario,rating", rows)
    run_source("events", {"path": path}, warehouse=warehouse)
    _check_log_ingested(Warehouse(warehouse))


@pytest.mark.parametrize("values, unit", [([957220200, 957220201], 1_000_000), ([957220200000, 1], 1000),
                                          ([957220200000000, 5], 1)])
def test_epoch_units_follow_the_magnitude(values, unit):
    got = parse_ts(pa.array(values, pa.int64())).cast(pa.int64()).to_pylist()
    assert got == [v * unit for v in values]


def test_naive_timestamps_and_iso_strings_mean_utc():
    naive = pa.array([dt.datetime(2004, 5, 1, 23, 30)], pa.timestamp("ms"))
    iso = pa.array(["2004-05-01T23:30:00", "2004-05-02T01:30:00+02:00", "2004-05-01"])
    want = dt.datetime(2004, 5, 1, 23, 30, tzinfo=UTC)
    assert parse_ts(naive).to_pylist() == [want]
    assert parse_ts(iso).to_pylist() == [want, want, dt.datetime(2004, 5, 1, tzinfo=UTC)]


def test_events_file_extends_dimensions_keeps_other_days_and_is_idempotent(ml100k_warehouse, copy_warehouse,
                                                                         tmp_path):
    path = copy_warehouse(ml100k_warehouse)
    wh = Warehouse(path)
    items_before, users_before = wh.read("items"), wh.read("users")
    days_before = wh.partitions("events")
    log = pa.table({"user_id": pa.array([1, 5000], pa.int64()), "item_id": pa.array([1, 99_999], pa.int64()),
                    "ts": pa.array([dt.datetime(2004, 5, 1, tzinfo=UTC)] * 2, pa.timestamp("us", tz="UTC")),
                    "scenario": ["rating", "rating"], "rating": pa.array([4.0, 1.0], pa.float32())})
    file = tmp_path / "new.parquet"
    pq.write_table(log, file)
    run_source("events", {"path": str(file)}, warehouse=path)
    assert wh.partitions("events") == sorted(days_before + ["2004-05-01"])
    items = wh.read("items")
    assert items.num_rows == items_before.num_rows + 1  # item 1 existed, 99999 is new
    old_rows = items.filter(items.column("item_id").to_numpy() <= items_before.num_rows).sort_by("item_id")
    assert old_rows.equals(items_before.sort_by("item_id"))  # existing MovieLens rows untouched
    assert wh.read("users").num_rows == users_before.num_rows + 1
    state = {name: canonical(wh.read(name), keys) for name, keys in KEYS.items()}
    run_source("events", {"path": str(file)}, warehouse=path)  # the same file again: same content
    for name, rows in state.items():
        assert canonical(wh.read(name), KEYS[name]).equals(rows), name


HEADER = "user_id,item_id,ts,scenario,rating"
GOOD = "1,2,2004-05-01T10:00:00Z,rating,4"
BAD_FILES = {
    "missing column": ("user_id,item_id,scenario,rating", ["1,2,rating,4"], "missing column.*ts"),
    "unknown column": (HEADER + ",colour", [GOOD + ",red"], "unknown column.*colour"),
    "mistyped user_id": (HEADER, [GOOD, "abc,2,2004-05-01T11:00:00Z,rating,4"], "user_id.*string.*int64"),
    "mistyped rating": (HEADER, [GOOD, "1,3,2004-05-01T11:00:00Z,rating,great"], "rating"),
    "null key": (HEADER, [GOOD, ",3,2004-05-01T11:00:00Z,rating,4"], "user_id.*null"),
    "null scenario": (HEADER, [GOOD, "1,3,2004-05-01T11:00:00Z,,4"], "scenario.*null"),
    "null ts": (HEADER, [GOOD, "1,3,,rating,4"], "ts.*null"),
    "unparseable ts": (HEADER, [GOOD, "1,3,yesterday,rating,4"], "ts.*unparseable.*yesterday"),
    "impossible date": (HEADER, [GOOD, "1,3,2004-02-30T10:00:00Z,rating,4"], "ts.*unparseable"),
    "duplicates": (HEADER, [GOOD, "9,9,2004-05-01T12:00:00Z,rating,4", GOOD], "duplicated"),
    "ds disagrees": (HEADER + ",ds", [GOOD + ",2004-05-02"], "ds disagrees"),
    "empty": (HEADER, [], "no rows"),
    # two scenarios of one rated (user, item, ts) would be two identical ranking samples
    "duplicate samples": (HEADER, [GOOD, "1,2,2004-05-01T10:00:00Z,click,4"], "dlrm_samples.*duplicated"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_events_file_leaves_warehouse_byte_for_byte_unchanged(case, ml100k_warehouse, copy_warehouse,
                                                                   tmp_path):
    header, rows, pattern = BAD_FILES[case]
    file = _write_csv(tmp_path / "bad.csv", header, rows)
    path = copy_warehouse(ml100k_warehouse)
    snap = tree_snapshot(path)
    with pytest.raises(ValueError, match=pattern) as info:
        run_source("events", {"path": file}, warehouse=path)
    assert "\n" not in str(info.value)
    assert tree_snapshot(path) == snap


@pytest.mark.parametrize("name, pattern", [("missing.parquet", "not found"), ("log.json", "parquet.*csv"),
                                           (None, "--path")])
def test_bad_path_is_refused(name, pattern, tmp_path, warehouse):
    opts = {}
    if name:
        opts["path"] = str(tmp_path / name)
        if name.endswith(".json"):
            (tmp_path / name).write_text("{}")
    snap = tree_snapshot(warehouse)
    with pytest.raises(ValueError, match=pattern):
        run_source("events", opts, warehouse=warehouse)
    assert tree_snapshot(warehouse) == snap


def test_bad_parquet_type_via_cli_exits_2(tmp_path, warehouse, capsys):
    table = _log().set_column(0, "user_id", pa.array([str(u) + "x" for u in range(6)]))
    pq.write_table(table, tmp_path / "log.parquet")
    snap = tree_snapshot(warehouse)
    argv = ["ingest", "events", "--path", str(tmp_path / "log.parquet"), "--warehouse", warehouse]
    assert cli.main(argv) == 2
    assert "user_id" in capsys.readouterr().err.strip().splitlines()[-1]
    assert tree_snapshot(warehouse) == snap
