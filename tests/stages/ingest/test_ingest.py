"""MovieLens ingestion, write semantics and the CLI path of ``lum ingest``."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pandas as pd
import pyarrow.compute as pc
import pytest

from stages.cli import app as cli
from stages.ingest.movielens import locate_movielens, read_atomic
from stages.pipeline.registry import ingest as run_source
from stages.warehouse.facade import Warehouse
from tests.stages.ingest_helpers import canonical, tree_snapshot

KEYS = {"events": ["user_id", "item_id", "ts", "scenario"], "items": ["item_id"], "users": ["user_id"],
        "dlrm_samples": ["user_id", "item_id", "ts"]}


def _source_frames(name: str):
    folder = locate_movielens(name)
    short = folder.name
    return (read_atomic(folder / f"{short}.inter"), read_atomic(folder / f"{short}.item"),
            read_atomic(folder / f"{short}.user"))


def _check_counts(wh: Warehouse, name: str) -> None:
    inter, item, user = _source_frames(name)
    events = wh.read("events")
    assert events.num_rows == len(inter)
    assert wh.read("items").num_rows == len(item)
    assert wh.read("users").num_rows == len(user)
    assert wh.read("dlrm_samples").num_rows == len(inter)
    days = pd.to_datetime(inter["timestamp"].astype("int64"), unit="s", utc=True).dt.strftime("%Y-%m-%d")
    assert wh.partitions("events") == sorted(set(days))


def test_ml100k_counts_match_the_source_files(ml100k_warehouse):
    wh = Warehouse(ml100k_warehouse)
    _check_counts(wh, "movielens-100k")
    assert wh.read("events").num_rows == 100_000  # the published ML-100K size


def test_ml100k_events_reproduce_every_source_rating(ml100k_warehouse):
    """(source user, title, timestamp, rating) of every warehouse event == the .inter file, as multisets."""
    wh = Warehouse(ml100k_warehouse)
    inter, item, _ = _source_frames("movielens-100k")
    items, user_rows = wh.read("items"), wh.read("users")
    titles = dict(zip(items.column("item_id").to_pylist(), items.column("title").to_pylist()))
    users = dict(zip(user_rows.column("user_id").to_pylist(), user_rows.column("source_id").to_pylist()))
    events = wh.read("events")
    got = Counter(
        (users[u], titles[i], int(t.timestamp()), float(r))
        for u, i, t, r in zip(events.column("user_id").to_pylist(), events.column("item_id").to_pylist(),
                              events.column("ts").to_pylist(), events.column("rating").to_pylist())
    )
    want = Counter(zip(inter["user_id"], inter["item_id"], inter["timestamp"].astype(int),
                       inter["rating"].astype(float)))
    assert got == want
    # items: id = 1-based row of the .item file; category = first genre, categories = all of them
    items = wh.read("items").sort_by("item_id").to_pylist()
    assert [r["item_id"] for r in items] == list(range(1, len(item) + 1))
    genre_col = item.columns[-1]
    assert [r["categories"] for r in items] == [g.split() for g in item[genre_col]]
    assert all(r["category"] == r["categories"][0] for r in items)


def test_ml100k_event_order_ds_and_labels(ml100k_warehouse):
    wh = Warehouse(ml100k_warehouse)
    events = wh.read("events").sort_by("event_idx")
    assert events.column("event_idx").to_pylist() == list(range(events.num_rows))
    ts = events.column("ts").to_pylist()
    assert all(a <= b for a, b in zip(ts, ts[1:]))  # event_idx is chronological with a stable tie-break
    assert events.column("ds").to_pylist() == [t.astimezone(dt.UTC).date().isoformat() for t in ts]
    assert set(events.column("scenario").to_pylist()) == {"rating"}
    samples = wh.read("dlrm_samples")
    labels = samples.column("label").to_pylist()
    assert labels == [int(r >= 4) for r in samples.column("rating").to_pylist()]
    assert 0 < sum(labels) < len(labels)


def test_reingest_is_idempotent_one_commit_per_table(ml100k_warehouse, copy_warehouse):
    path = copy_warehouse(ml100k_warehouse)
    wh = Warehouse(path)
    before = {name: (wh.version(name), canonical(wh.read(name), KEYS[name])) for name in KEYS}
    summary = run_source("movielens-100k", {}, warehouse=path)
    for name, (version, rows) in before.items():
        assert wh.version(name) == version + 1, name  # the whole table in ONE commit
        assert canonical(wh.read(name), KEYS[name]).equals(rows), name
    assert summary["events"] == 100_000 and summary["days"] == len(wh.partitions("events"))


def test_unknown_dataset_is_refused_and_changes_nothing(ml100k_warehouse, copy_warehouse):
    path = copy_warehouse(ml100k_warehouse)
    snap = tree_snapshot(path)
    with pytest.raises(ValueError, match="unknown dataset 'nonsense'"):
        run_source("nonsense", {}, warehouse=path)
    assert tree_snapshot(path) == snap


def test_cli_unknown_dataset_exits_2(warehouse, capsys):
    snap = tree_snapshot(warehouse)
    assert cli.main(["ingest", "nonsense", "--warehouse", warehouse]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lum: error: unknown dataset 'nonsense'")
    assert tree_snapshot(warehouse) == snap


def test_cli_synthetic_prints_summary(warehouse, capsys):
    import json

    code = cli.main(["ingest", "synthetic", "--users", "50", "--items", "40", "--categories", "4",
                     "--days", "3", "--seed", "1", "--start", "2001-01-01", "--warehouse", warehouse, "-q"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["users"] == 50 and summary["items"] == 40
    assert summary["events"] == Warehouse(warehouse).read("events").num_rows
    assert summary["first_ds"] >= "2001-01-01" and summary["last_ds"] <= "2001-01-03"


def test_full_ingest_replaces_days_of_a_previous_dataset(warehouse):
    run_source("synthetic", {"users": 30, "items": 20, "categories": 3, "days": 2, "start": "1990-01-01"},
               warehouse=warehouse)
    run_source("synthetic", {"users": 30, "items": 20, "categories": 3, "days": 2, "start": "1991-06-01"},
               warehouse=warehouse)
    wh = Warehouse(warehouse)
    assert all(d.startswith("1991-06-0") for d in wh.partitions("events"))
    assert all(d.startswith("1991-06-0") for d in pc.unique(wh.read("dlrm_samples").column("ds")).to_pylist())


@pytest.mark.slow
def test_ml1m_counts(warehouse):
    summary = run_source("movielens-1m", {}, warehouse=warehouse)
    wh = Warehouse(warehouse)
    _check_counts(wh, "movielens-1m")
    assert (summary["events"], summary["users"], summary["items"]) == (1_000_209, 6_040, 3_883)
    assert summary["days"] == len(wh.partitions("events")) == 1_040
    assert wh.version("events") == 0  # 1,040 days in a single commit
