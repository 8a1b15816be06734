"""A time-aware LUM end to end: pretrain with gaps and popularity, infer, and score from the tables alone."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
import torch

from stages.core.config import from_mapping
from stages.core.dates import day_end, next_day
from stages.infer.stage import Config as InferConfig
from stages.infer.stage import run as infer_run
from stages.model import store as model_store
from stages.model.item_popularity import popularity_for
from stages.model.timefeat import AGE_BUCKETS, POP_BUCKETS, age_buckets
from stages.pretrain import stage as pretrain
from stages.query.catalog import read_catalog, read_users
from stages.query.score import knowledge_scores
from stages.warehouse.facade import Warehouse
from tests.stages.pretrain_fixtures import TINY, make_warehouse


def _write_events(wh: Warehouse, ds: str) -> None:
    """events from the sequences partition ds, plus a burst of item 3 on the last day (it becomes popular)."""
    seq = wh.read("user_sequences", ds=ds).to_pylist()
    rows = [{"user_id": r["user_id"], "item_id": i, "ts": t, "scenario": "rating", "rating": 4.0}
            for r in seq for i, t in zip(r["item_ids"], r["ts"])]
    last = dt.datetime.fromisoformat(ds).replace(tzinfo=dt.UTC) + dt.timedelta(hours=5)
    rows += [{"user_id": 1000 + k, "item_id": 3, "ts": last, "scenario": "rating", "rating": 4.0} for k in range(30)]
    table = pa.Table.from_pylist(rows)
    days = pa.array([t.date().isoformat() for t in table.column("ts").to_pylist()], pa.string())
    table = table.append_column("event_idx", pa.array(np.arange(table.num_rows), pa.int64())).append_column("ds", days)
    for day in sorted(set(days.to_pylist())):
        wh.write_partition("events", table.filter(pa.compute.equal(table.column("ds"), day)), ds=day)


def _first_event_day(wh: Warehouse, item_id: int) -> int:
    """Epoch day of the item's first event, read straight from the events table."""
    ts = wh.read("events", columns=["item_id", "ts"]).filter(pa.compute.equal(pa.compute.field("item_id"), item_id))
    return min(t.date() for t in ts.column("ts").to_pylist()).toordinal() - dt.date(1970, 1, 1).toordinal()


@pytest.mark.parametrize("item_age", [False, True])
def test_time_features_train_infer_and_score_from_the_tables(warehouse, item_age):
    (ds,) = make_warehouse(warehouse, days=1)
    wh = Warehouse(warehouse)
    _write_events(wh, ds)
    old_day = dt.date.fromisoformat(ds) - dt.timedelta(days=200)   # item 5 was first watched long before the rest
    wh.write_partition("events", pa.Table.from_pylist([{
        "user_id": 5000, "item_id": 5, "ts": dt.datetime.combine(old_day, dt.time(12), dt.UTC), "scenario": "rating",
        "rating": 4.0, "event_idx": 10**6, "ds": old_day.isoformat()}]), ds=old_day.isoformat())
    s = pretrain.run(from_mapping(pretrain.Config, {**TINY, "time_features": True, "eval": True,
                                                    "item_age": item_age}), ds=ds, warehouse=warehouse)
    assert s["steps"] > 0 and np.isfinite(s["loss"]) and 0.0 <= s["hr@10"] <= 1.0
    summary = infer_run(InferConfig(), ds=ds, warehouse=warehouse)
    width = POP_BUCKETS + (AGE_BUCKETS if item_age else 0)
    assert summary["dim"] == TINY["d_model"] + width
    loaded = model_store.load(warehouse, summary["model_version"])
    model, vocab = loaded.model.eval(), loaded.vocab
    assert model.cfg.item_age is item_age
    # item_knowledge: [e_i, one-hot of the item's popularity bucket (+ one-hot of its age bucket) at the end of ds]
    items = wh.read("item_knowledge", ds=ds).sort_by("item_id")
    e_tab = np.stack(items.column("embedding").to_numpy(zero_copy_only=False))
    pop = popularity_for(wh, vocab, first_ds=next_day(ds), last_ds=next_day(ds), window=30, item_age=item_age)
    buckets = pop.buckets[0]
    rows = vocab.item_rows(items.column("item_id").to_numpy())
    drift = e_tab[:, TINY["d_model"]:]
    np.testing.assert_array_equal(drift[:, :POP_BUCKETS].argmax(1), buckets[rows])
    assert (drift.sum(1) == (2 if item_age else 1)).all() and ((drift == 0) | (drift == 1)).all()
    assert buckets[vocab.item_rows([3])[0]] < buckets[vocab.item_rows([7])[0]]  # the burst: more popular
    ages = np.zeros(len(rows), dtype=np.int64)
    if item_age:  # the age bucket of each item on ds + 1, from its first event in the events table
        query_day = dt.date.fromisoformat(next_day(ds)).toordinal() - dt.date(1970, 1, 1).toordinal()
        want = [int(age_buckets(torch.tensor(query_day - _first_event_day(wh, int(i))))) for i in
                items.column("item_id").to_pylist()]
        ages = drift[:, POP_BUCKETS:].argmax(1)
        np.testing.assert_array_equal(ages, want)
        assert len(set(want)) == 2  # item 5 is older than the rest
    # the tables' score of every item for user 2 = the model's logit s <o, e> + the query's bucket weight
    catalog = read_catalog(wh, ds)
    users = read_users(wh, ds, catalog)
    u = int(np.searchsorted(users.user_ids, 2))
    table_scores = knowledge_scores(users.embedding[[u]], users.has[[u]], np.zeros_like(users.logprob[[u]]),
                                    users.temperature[[u]], catalog.embedding, catalog.item_col)[0]
    seq = wh.read("user_sequences", ds=ds, filters=[("user_id", "==", 2)]).to_pylist()[0]
    hist = torch.from_numpy(vocab.item_rows(np.asarray(seq["item_ids"])))
    conds = torch.from_numpy(vocab.condition_ids(seq["conditions"]))
    ts = torch.tensor([int(t.timestamp()) for t in seq["ts"]])
    cols = [c for c in catalog.columns]
    q = torch.tensor([vocab.condition_id(f"category={c}") for c in cols])
    with torch.no_grad():
        o, w = model.encode_grouped(hist, conds, torch.tensor([0, len(hist)], dtype=torch.int32), q,
                                    torch.tensor([0, len(q)], dtype=torch.int32), hist_ts=ts,
                                    query_ts=torch.tensor([int(day_end(ds).timestamp())]), with_popularity=True)
        e = model.item_embeddings(torch.from_numpy(vocab.item_rows(catalog.item_ids)))
    cat_rows = vocab.item_rows(catalog.item_ids)
    b = torch.from_numpy(buckets[cat_rows].astype(np.int64))
    logits = (o @ e.t()).double() * float(model.logit_scale.detach()) + w.double()[:, b]
    if item_age:  # the age bonus: the query's weight of the item's age bucket (after the popularity ones)
        age_of_row = dict(zip(rows.tolist(), ages.tolist()))
        a = torch.tensor([POP_BUCKETS + age_of_row[r] for r in cat_rows.tolist()])
        logits = logits + w.double()[:, a]
    direct = logits[catalog.item_col, np.arange(len(catalog.item_ids))].numpy()
    for c in range(len(cols)):  # the table score is the logit minus the column's logsumexp
        in_c = catalog.item_col == c
        if in_c.any():
            np.testing.assert_allclose(table_scores[in_c] - table_scores[in_c].max(),
                                       direct[in_c] - direct[in_c].max(), atol=2e-4)
