"""user_knowledge.condition_logprob and temperature: written by infer, normalised per user, checked by hand."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
from deltalake import write_deltalake

from stages.infer.encode import segment_log_softmax
from stages.infer.stage import Config, run
from stages.model import store as model_store
from stages.warehouse.facade import Warehouse
from tests.stages.infer.test_infer import DS, publish_model, read_sorted, write_items, write_sequences


def _per_user_exp_sum(uk: pa.Table) -> dict[int, float]:
    users = uk.column("user_id").to_numpy()
    p = np.exp(uk.column("condition_logprob").to_numpy().astype(np.float64))
    return {int(u): float(p[users == u].sum()) for u in np.unique(users)}


@pytest.mark.parametrize("mode", ["grouped", "naive"])
def test_learned_condition_logprob_is_the_head_normalised_per_user(warehouse, mode):
    publish_model(warehouse)
    seqs = write_sequences(warehouse)
    write_items(warehouse)
    summary = run(Config(mode=mode, chunk_users=8, token_budget=64), ds=DS, warehouse=warehouse)
    assert summary["condition_prior"] == "learned"
    uk = read_sorted(warehouse)
    lp = uk.column("condition_logprob").to_numpy()
    temp = uk.column("temperature").to_numpy()
    assert uk.schema.field("condition_logprob").type == pa.float32() and np.isfinite(lp).all() and (lp <= 0).all()
    sums = _per_user_exp_sum(uk)
    assert len(sums) == 29 and all(abs(s - 1.0) < 1e-5 for s in sums.values())
    loaded = model_store.load(warehouse, model_store.latest_version(warehouse, through=DS))
    model, vocab = loaded.model.eval(), loaded.vocab
    np.testing.assert_allclose(temp, 1.0 / float(model.logit_scale.detach()), rtol=1e-6)
    # user 5 by hand: the head at its last item token, log-softmaxed over its four written conditions
    row = seqs.filter(pc.equal(seqs.column("user_id"), 5)).to_pylist()[0]
    mine = uk.filter(pc.equal(uk.column("user_id"), 5))
    conds = mine.column("condition").to_pylist()
    items = torch.from_numpy(vocab.item_rows(np.asarray(row["item_ids"][-15:])))
    hist_conds = torch.from_numpy(vocab.condition_ids(row["conditions"][-15:]))
    q = torch.from_numpy(vocab.condition_ids(conds))
    with torch.inference_mode():
        _, log_p = model.encode_grouped(items, hist_conds, torch.tensor([0, len(items)], dtype=torch.int32), q,
                                        torch.tensor([0, len(q)], dtype=torch.int32), with_next_cond=True)
    expected = torch.log_softmax(log_p[0, q].double(), dim=0).numpy()
    np.testing.assert_allclose(mine.column("condition_logprob").to_numpy(), expected, atol=1e-5)


def test_model_without_head_falls_back_to_the_smoothed_history_frequency(warehouse, caplog):
    publish_model(warehouse, cond_loss_weight=0.0)
    seqs = write_sequences(warehouse)
    write_items(warehouse)
    with caplog.at_level("WARNING"):
        summary = run(Config(chunk_users=8), ds=DS, warehouse=warehouse)
    assert summary["condition_prior"] == "frequency"
    assert any("no next-condition head" in r.getMessage() for r in caplog.records)
    uk = read_sorted(warehouse)
    by_user = {r["user_id"]: r for r in seqs.to_pylist()}
    for uid, rows in _rows_by_user(uk).items():
        history = by_user[uid]["conditions"][-15:]  # the history_len = max_len - 1 behaviours the model read
        counts = np.array([history.count(c) for c, _ in rows], dtype=np.float64)
        expected = np.log((counts + 1) / (counts + 1).sum())
        np.testing.assert_allclose([lp for _, lp in rows], expected, atol=1e-6)


def _rows_by_user(uk: pa.Table) -> dict[int, list[tuple[str, float]]]:
    out: dict[int, list[tuple[str, float]]] = {}
    for r in uk.select(["user_id", "condition", "condition_logprob"]).to_pylist():
        out.setdefault(r["user_id"], []).append((r["condition"], r["condition_logprob"]))
    return out


def test_top_k_conditions_are_normalised_over_the_users_own_conditions(warehouse):
    publish_model(warehouse)
    write_sequences(warehouse)
    run(Config(conditions="top:2"), ds=DS, warehouse=warehouse)
    uk = read_sorted(warehouse)
    counts = {u: n for u, n in zip(*np.unique(uk.column("user_id").to_numpy(), return_counts=True))}
    assert set(counts.values()) <= {1, 2} and 1 in counts.values()  # some users have one category only
    assert all(abs(s - 1.0) < 1e-5 for s in _per_user_exp_sum(uk).values())
    single = [u for u, n in counts.items() if n == 1]
    lp = uk.filter(pc.is_in(uk.column("user_id"), pa.array(single, pa.int64()))).column("condition_logprob")
    np.testing.assert_allclose(lp.to_numpy(), 0.0, atol=1e-6)


def test_segment_log_softmax_matches_a_loop():
    rng = np.random.default_rng(0)
    lengths = [1, 3, 5, 2]
    values = rng.normal(size=sum(lengths)) * 30
    got = segment_log_softmax(values, lengths)
    start = 0
    for n in lengths:
        seg = values[start:start + n]
        np.testing.assert_allclose(got[start:start + n], seg - np.log(np.exp(seg - seg.max()).sum()) - seg.max(),
                                   atol=1e-12)
        start += n


def test_a_table_written_before_the_columns_gains_them_on_the_next_run(wh_old):
    """An older partition (no condition_logprob in the table) stays readable as null; the new one has values."""
    wh = Warehouse(wh_old)
    assert "condition_logprob" not in {f.name for f in wh.delta_table("user_knowledge").schema().fields}
    run(Config(chunk_users=8), ds=DS, warehouse=wh_old)
    both = wh.read("user_knowledge")
    new = both.filter(pc.equal(both.column("ds"), DS))
    old = both.filter(pc.equal(both.column("ds"), "2000-01-09"))
    assert old.num_rows == 2 and old.column("condition_logprob").null_count == 2
    assert new.num_rows == 29 * 4 and new.column("condition_logprob").null_count == 0


@pytest.fixture
def wh_old(warehouse):
    publish_model(warehouse)
    write_sequences(warehouse)
    write_items(warehouse)
    write_old_partition(warehouse, "2000-01-09")
    return warehouse


def write_old_partition(warehouse: str, ds: str) -> None:
    """A user_knowledge partition in the layout before condition_logprob/temperature existed."""
    old = pa.table({
        "ds": [ds, ds], "user_id": pa.array([1, 2], pa.int64()), "condition": ["category=Action"] * 2,
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(np.ones(32, np.float32)), 16),
        "model_version": ["lum-old"] * 2, "history_len": pa.array([3, 4], pa.int32())})
    write_deltalake(Warehouse(warehouse).table_uri("user_knowledge"), old, partition_by=["ds"], mode="append")
