"""The synthetic generator: determinism, learnable structure, and its write path."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stages.core.config import from_mapping
from stages.ingest import events, movielens, synthetic
from stages.ingest.synthetic import Config, generate
from stages.ingest.tables import dlrm_samples_from_events, validate_tables
from stages.pipeline.registry import build_config
from stages.pipeline.registry import ingest as run_source
from stages.warehouse.facade import Warehouse
from tests.stages.ingest_helpers import tree_snapshot

CFG = Config(users=1_500, items=400, categories=12, days=20, seed=3, start="2001-03-01",
             chunk_users=500)


@pytest.fixture(scope="module")
def frames():
    tables = generate(CFG)
    events = tables["events"].to_pandas()
    items = tables["items"].to_pandas()
    return tables, events.merge(items[["item_id", "category"]], on="item_id", how="left")


def test_same_seed_same_tables_other_seed_differs():
    small = Config(users=300, items=60, categories=5, days=4, seed=11, chunk_users=100)
    first, second = generate(small), generate(small)
    for name in ("events", "items", "users"):
        assert first[name].equals(second[name]), name
    other = generate(Config(users=300, items=60, categories=5, days=4, seed=12, chunk_users=100))
    assert not first["events"].equals(other["events"])


def test_tables_pass_the_schemas_and_cover_the_window(frames):
    tables, events = frames
    tables = dict(tables, dlrm_samples=dlrm_samples_from_events(tables["events"]))
    validated = validate_tables(tables)  # key uniqueness, types, ds format
    assert validated["users"].num_rows == CFG.users and validated["items"].num_rows == CFG.items
    assert set(events["user_id"]) <= set(range(1, CFG.users + 1))
    assert events["item_id"].between(1, CFG.items).all() and events["category"].notna().all()
    days = sorted(events["ds"].unique())
    assert days[0] >= "2001-03-01" and days[-1] <= "2001-03-20" and len(days) > 10
    assert (events["ds"] == events["ts"].dt.strftime("%Y-%m-%d")).all()
    assert sorted(events["event_idx"]) == list(range(len(events)))
    assert set(events["rating"].unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_users_have_persistent_category_preferences(frames):
    _, events = frames
    lengths = events.groupby("user_id").size()
    active = lengths[lengths >= 10].index
    sub = events[events["user_id"].isin(active)]
    top_share = sub.groupby("user_id")["category"].agg(lambda s: s.value_counts().iloc[0] / len(s))
    assert top_share.mean() > 3.0 / CFG.categories  # uniform tastes would give ~1/K (+ small-sample bias)
    # persistence: a user's top category in the first half of the history is still over-chosen later
    sub = sub.sort_values(["user_id", "ts"])
    half = sub.groupby("user_id").cumcount() < sub.groupby("user_id")["ts"].transform("size") // 2
    early_top = sub[half].groupby("user_id")["category"].agg(lambda s: s.value_counts().index[0])
    late = sub[~half]
    hit = (late["category"].to_numpy() == early_top.loc[late["user_id"]].to_numpy()).mean()
    assert hit > 3.0 / CFG.categories


def test_heavy_tails_and_popularity_skew(frames):
    _, events = frames
    lengths = events.groupby("user_id").size()
    assert lengths.max() > 5 * lengths.median()  # heavy-tailed history lengths
    assert lengths.min() >= 1 and abs(lengths.mean() - CFG.mean_events) < 0.25 * CFG.mean_events
    counts = events["item_id"].value_counts()
    top = counts.iloc[: max(1, len(counts) // 20)].sum() / counts.sum()
    assert top > 3 * 0.05  # the top 5% of items take far more than 5% of events


def test_ratings_follow_preference_so_labels_are_learnable(frames):
    _, events = frames
    share = events.groupby(["user_id", "category"]).size() / events.groupby("user_id").size()
    events = events.join(share.rename("share"), on=["user_id", "category"])
    label = (events["rating"] >= 4).astype(int)
    liked = label[events["share"] >= 0.3].mean()
    other = label[events["share"] < 0.1].mean()
    assert liked > other + 0.2


def test_run_source_writes_the_four_tables(warehouse):
    opts = {"users": 120, "items": 50, "categories": 5, "days": 3, "seed": 2, "start": "2002-02-02",
            "path": None}  # flags the command did not get (None) are skipped
    summary = run_source("synthetic", opts, warehouse=warehouse)
    wh = Warehouse(warehouse)
    assert wh.read("users").num_rows == 120 and wh.read("items").num_rows == 50
    assert wh.read("events").num_rows == summary["events"] == wh.read("dlrm_samples").num_rows
    assert set(wh.partitions("events")) <= {"2002-02-02", "2002-02-03", "2002-02-04"}


@pytest.mark.parametrize("opts, word", [
    ({"users": 0}, "--users"), ({"days": -1}, "--days"), ({"start": "2001-02-30"}, "start"),
    ({"seed": -4}, "--seed"), ({"users": "many"}, "users"),
])
def test_bad_options_are_refused_before_any_write(warehouse, opts, word):
    run_source("synthetic", {"users": 20, "items": 10, "categories": 2, "days": 2}, warehouse=warehouse)
    snap = tree_snapshot(warehouse)
    with pytest.raises(ValueError, match=word) as info:
        run_source("synthetic", opts, warehouse=warehouse)
    assert "\n" not in str(info.value)
    assert tree_snapshot(warehouse) == snap


def test_chunking_keeps_generation_bounded_and_ids_global():
    cfg = Config(users=250, items=30, categories=3, days=2, chunk_users=100)
    events = generate(cfg)["events"]
    users = np.unique(events.column("user_id").to_numpy())
    assert users.min() >= 1 and users.max() <= 250 and len(users) == 250  # every user has >= 1 event
    idx = events.column("event_idx").to_numpy()
    assert (np.diff(idx) == 1).all() and idx[0] == 0  # event_idx continues across chunks
    frame = pd.DataFrame({"u": events.column("user_id").to_numpy(), "t": events.column("ts").to_numpy()})
    assert frame.groupby("u")["t"].apply(lambda t: t.is_monotonic_increasing and t.is_unique).all()


def test_sources_are_config_and_run_stages(warehouse):
    """Each source module runs from its own Config; the registry builds it from options, presets included."""
    cfg = from_mapping(synthetic.Config, {"users": 20, "items": 10, "categories": 2, "days": 2, "seed": 5})
    summary = synthetic.run(cfg, warehouse=Warehouse(warehouse))
    assert summary["source"] == "synthetic" and Warehouse(warehouse).read("users").num_rows == 20
    assert build_config("ingest.movielens-100k", options={"path": None}) == movielens.Config("movielens-100k")
    assert build_config("ingest.events", options={"path": "x.csv"}) == events.Config(path="x.csv")
    assert build_config("ingest.synthetic", options={"users": 7}) == synthetic.Config(users=7)
    with pytest.raises(ValueError, match="path"):  # another source's option is an error, not ignored
        build_config("ingest.synthetic", options={"users": 7, "path": "x.csv"})
    with pytest.raises(ValueError, match="movielens-2m"):
        movielens.run(movielens.Config("movielens-2m"), warehouse=warehouse)
    with pytest.raises(ValueError, match="--path"):
        events.run(events.Config(), warehouse=warehouse)
