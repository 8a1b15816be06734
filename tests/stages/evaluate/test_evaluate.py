"""``lum evaluate``: AUC against brute force, point-in-time history, and a positive lift on data whose
LUM columns carry the signal while the base features do not."""

from __future__ import annotations

import datetime as dt
import json
import os

import numpy as np
import pyarrow as pa
import pytest

from stages.evaluate.features import _history, build_features
from stages.evaluate.metrics import auc
from stages.evaluate.stage import Config, run


def brute_auc(labels, scores) -> float:
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = rng.integers(0, 12, 300).astype(float)  # many ties
    assert auc(labels, scores) == pytest.approx(brute_auc(labels, scores), abs=1e-12)
    assert auc(labels, -scores) == pytest.approx(1.0 - brute_auc(labels, scores), abs=1e-12)
    assert np.isnan(auc(np.ones(5), np.arange(5.0)))


def test_history_uses_only_strictly_earlier_rows_of_the_same_user():
    users = np.array([1, 1, 1, 1, 2, 2])
    ts = np.array([10, 20, 20, 30, 5, 6])
    items = np.array([11, 12, 13, 14, 21, 22])
    h = _history(users, ts, items, 2)
    assert h.tolist() == [[0, 0], [0, 11], [0, 11], [12, 13], [0, 0], [0, 21]]


def test_prior_events_extend_the_history_only():
    """Events from before the train window feed the DIN history (never rows); unseen items become 0."""
    t = pa.timestamp("us", tz="UTC")

    def rows(users, items, secs, label=1):
        base = dt.datetime(2001, 1, 2, tzinfo=dt.UTC)
        return pa.table({"user_id": pa.array(users, pa.int64()), "item_id": pa.array(items, pa.int64()),
                         "ts": pa.array([base + dt.timedelta(seconds=x) for x in secs], t),
                         "label": pa.array([label] * len(users), pa.int32()), "scenario": ["rating"] * len(users)})

    train, test = rows([1, 2], [10, 11], [0, 0]), rows([1], [11], [100], label=0)
    prior = rows([1, 1, 2], [11, 99, 10], [-86_400, -3_600, -60])  # day before; item 99 not in train
    cfg = Config(history_len=3, lum_columns=())
    tr, te, _, _ = build_features(train, test, None, None, cfg, prior=prior)
    assert tr.sparse.shape[0] == 2 and te.sparse.shape[0] == 1   # prior rows are not model rows
    i10, i11 = tr.sparse[0, 1], tr.sparse[1, 1]                   # train vocabulary indices of items 10, 11
    assert tr.history.tolist() == [[0, i11, 0], [0, 0, i10]]      # user 1: 11 then 99 (unseen -> 0)
    assert te.history.tolist() == [[i11, 0, i10]]                 # + its train row, strictly earlier
    tr0, te0, _, _ = build_features(train, test, None, None, cfg)
    assert tr0.history.tolist() == [[0, 0, 0], [0, 0, 0]] and te0.history.tolist() == [[0, 0, i10]]


D0 = dt.date(2001, 1, 1)


def _day(i: int) -> str:
    return (D0 + dt.timedelta(days=i)).isoformat()


def _synthetic_training(rng, day: int, n: int, dim: int = 4, n_cond: int = 3) -> pa.Table:
    """Rows whose label depends only on lum_target_match (users and items are fresh noise)."""
    user = rng.integers(0, 100_000, n)  # almost every user unique: the user id cannot be learned
    item = rng.integers(0, 40, n)
    lum_user = rng.normal(size=(n, dim)).astype(np.float32)
    lum_item = rng.normal(size=(n, dim)).astype(np.float32)
    cos = (lum_user * lum_item).sum(1) / np.linalg.norm(lum_user, axis=1) / np.linalg.norm(lum_item, axis=1)
    label = (rng.random(n) < 1 / (1 + np.exp(-6 * cos))).astype(np.int32)
    match = np.stack([cos, rng.uniform(-1, 1, n), rng.uniform(-1, 1, n)][:n_cond], 1).astype(np.float32)
    base = dt.datetime(D0.year, D0.month, D0.day, tzinfo=dt.UTC) + dt.timedelta(days=day)
    ts = [base + dt.timedelta(seconds=int(s)) for s in rng.integers(0, 86_399, n)]
    no_knowledge = rng.random(n) < 0.05
    return pa.table({
        "user_id": pa.array(user, pa.int64()), "item_id": pa.array(item, pa.int64()),
        "ts": pa.array(ts, pa.timestamp("us", tz="UTC")), "label": pa.array(label, pa.int32()),
        "rating": pa.array(np.where(label == 1, 4.0, 2.0), pa.float32()), "scenario": ["rating"] * n,
        "lum_match": pa.array([None if m else r.tolist() for r, m in zip(match, no_knowledge)],
                              pa.list_(pa.float32())),
        "lum_target_match": pa.array(np.where(no_knowledge, np.nan, cos), pa.float32(), from_pandas=True),
        "lum_user": pa.array([None if m else r.tolist() for r, m in zip(lum_user, no_knowledge)],
                             pa.list_(pa.float32(), dim)),
        "lum_item": pa.array([None if m else r.tolist() for r, m in zip(lum_item, no_knowledge)],
                             pa.list_(pa.float32(), dim)),
        "lum_knowledge_ds": [None if m else _day(day - 1) for m in no_knowledge],
        "lum_model_version": [None if m else "lum-test" for m in no_knowledge],
    })


def test_evaluate_lift_is_positive_when_only_lum_carries_signal(warehouse, tmp_path):
    from stages.warehouse.facade import Warehouse

    rng = np.random.default_rng(0)
    wh = Warehouse(warehouse)
    for day in range(1, 6):
        wh.write_partition("dlrm_training", _synthetic_training(rng, day, 700), ds=_day(day))
    wh.write_table("items", pa.table({"item_id": pa.array(range(40), pa.int64()),
                                      "title": [f"m{i}" for i in range(40)],
                                      "category": [f"c{i % 4}" for i in range(40)],
                                      "categories": [[f"c{i % 4}"] for i in range(40)]}))
    out = str(tmp_path / "report")
    cfg = Config(epochs=3, batch_size=256, lr=5e-3, history_len=4, train_start=_day(1), train_end=_day(3),
                 test_end=_day(5), out_dir=out)
    summary = run(cfg, warehouse=warehouse)
    assert summary["train_rows"] == 2100 and summary["test_rows"] == 1400
    assert summary["auc_with_lum"] > 0.7
    assert abs(summary["auc_without_lum"] - 0.5) < 0.08
    assert summary["lift"] > 0.1 and summary["lift_with_knowledge"] > 0.1
    assert 0.9 < summary["test_with_knowledge"] < 1.0  # 5% of the rows have no knowledge
    with open(os.path.join(out, "evaluate.json")) as fh:
        report = json.load(fh)
    assert report["lift"] == pytest.approx(report["with_lum"]["auc"] - report["without_lum"]["auc"])
    assert report["with_lum"]["dense_dim"] == 1 + 3 + 4 + 4 + 1
    assert os.path.getsize(os.path.join(out, "evaluate.png")) > 1000


def test_evaluate_rejects_bad_windows(warehouse, tmp_path):
    with pytest.raises(ValueError, match="train_end < test_end"):
        run(Config(train_start="2001-01-03", train_end="2001-01-05", test_end="2001-01-05", out_dir=str(tmp_path)),
            warehouse=warehouse)
    with pytest.raises(ValueError, match="dlrm_training does not exist"):
        run(Config(train_start="2001-01-01", train_end="2001-01-02", test_end="2001-01-03", out_dir=str(tmp_path)),
            warehouse=warehouse)


def test_evaluate_requires_the_window_in_the_config(warehouse):
    """The window is part of Config; an unset day is a ValueError naming the field, before any read."""
    with pytest.raises(ValueError, match="train_start must be YYYY-MM-DD"):
        run(Config(), warehouse=warehouse)
    with pytest.raises(ValueError, match="test_end must be YYYY-MM-DD"):
        run(Config(train_start="2001-01-01", train_end="2001-01-02"), warehouse=warehouse)
