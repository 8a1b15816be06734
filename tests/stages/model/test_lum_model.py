"""LUM model: grouped queries equal per-condition forwards, config checks, OOV rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.model.lum import ModelConfig, build_model
from stages.model.vocab import Vocab, interleave, parse_condition


def _vocab(features=("category",)):
    return Vocab.build(range(10, 40), [f"g{i % 4}" for i in range(30)], features=features,
                       scenarios=["rating", "click"])


def _model(vocab, **kw):
    torch.manual_seed(0)
    cfg = {"d_model": 16, "n_heads": 2, "n_layers": 2, "d_ff": 32, "dropout": 0.0, "max_len": 12, "d_item": 8,
           "d_feature": 4}
    cfg.update(kw)
    return build_model(ModelConfig(**cfg), vocab).eval()


def test_vocab_conditions_and_oov():
    v = _vocab(("category", "scenario"))
    assert v.conditions[0] == "<unk>"
    assert "category=g3,scenario=click" in v.conditions
    assert v.n_conditions == 1 + 4 * 2
    assert v.item_rows([10, 39, 5, 1000]).tolist() == [1, 30, 0, 0]
    assert v.condition_ids(["category=g1,scenario=rating", "nope"]).tolist()[1] == 0
    with pytest.raises(ValueError, match="not in the model vocabulary"):
        v.condition_id("category=zzz,scenario=rating")
    with pytest.raises(ValueError, match="in that order"):
        parse_condition("scenario=rating,category=g1", v.features)
    assert Vocab.from_json(v.to_json()).conditions == v.conditions
    assert interleave(torch.tensor([1, 3]), torch.tensor([2, 4])).tolist() == [1, 2, 3, 4]


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="d_model 30 must be a positive multiple of n_heads 4"):
        _model(_vocab(), d_model=30, n_heads=4)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_encode_grouped_equals_one_forward_per_condition(backend):
    """Both backends (triton under TRITON_INTERPRET=1), each layer through the batch's one plan."""
    vocab = _vocab()
    model = _model(vocab, d_model=32)  # heads of 16: the smallest the Triton kernel takes
    rng = np.random.default_rng(0)
    lens, queries = [5, 1, 0, 11], [[1, 2, 3], [4], [2, 3], [1, 2, 3, 4]]
    items = [torch.from_numpy(rng.integers(1, 31, size=n)) for n in lens]
    conds = [torch.from_numpy(vocab.item_conditions()[x.numpy()]) for x in items]
    cu_h = torch.tensor(np.concatenate([[0], np.cumsum(lens)]), dtype=torch.int32)
    cu_q = torch.tensor(np.concatenate([[0], np.cumsum([len(q) for q in queries])]), dtype=torch.int32)
    q_ids = torch.tensor([c for q in queries for c in q])
    with torch.no_grad():  # inference: the Triton path has no backward for grouped batches
        out = model.encode_grouped(torch.cat(items), torch.cat(conds), cu_h, q_ids, cu_q, backend=backend)
    assert out.shape == (q_ids.numel(), 32)
    expected = []
    for it, cd, qs in zip(items, conds, queries):
        for c in qs:  # naive: history + (c, any item); the output at c is o_q
            seq_i = torch.cat([it, torch.tensor([1])])
            seq_c = torch.cat([cd, torch.tensor([c])])
            o = model.encode_packed(seq_i, seq_c, torch.tensor([0, seq_i.numel()], dtype=torch.int32))
            expected.append(o[-1])
    torch.testing.assert_close(out, torch.stack(expected), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(len(out)))


def test_encode_grouped_reads_history_len_behaviours_on_trained_positions():
    """max_len 4: a query reads the last history_len = 3 behaviours, so history + query is one max_len training
    sequence (encode_packed, the path training runs) and uses no position slot training never reaches."""
    vocab = _vocab()
    model = _model(vocab, max_len=4)
    assert model.cfg.history_len == 3
    items = torch.arange(1, 8)
    conds = torch.from_numpy(vocab.item_conditions()[items.numpy()])
    q = torch.tensor([2])
    cu_q = torch.tensor([0, 1], dtype=torch.int32)
    full = model.encode_grouped(items, conds, torch.tensor([0, 7], dtype=torch.int32), q, cu_q)
    last = model.encode_grouped(items[-3:], conds[-3:], torch.tensor([0, 3], dtype=torch.int32), q, cu_q)
    torch.testing.assert_close(full, last)
    as_training = model.encode_packed(torch.cat([items[-3:], torch.tensor([1])]), torch.cat([conds[-3:], q]),
                                      torch.tensor([0, 4], dtype=torch.int32))
    torch.testing.assert_close(full, as_training[-1:], atol=1e-5, rtol=1e-4)
    four = model.encode_grouped(items[-4:], conds[-4:], torch.tensor([0, 4], dtype=torch.int32), q, cu_q)
    torch.testing.assert_close(four, last)  # a 4th behaviour would need positions 7 and 8: cut


def test_item_embeddings_unit_norm_with_oov_row():
    vocab = _vocab()
    model = _model(vocab)
    e = model.item_embeddings()
    assert e.shape == (vocab.n_item_rows, 16)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(vocab.n_item_rows))
    torch.testing.assert_close(model.item_embeddings(torch.tensor([0, 3])), e[[0, 3]])


@pytest.mark.parametrize("features", [("category",), ("category", "scenario")])
def test_next_condition_log_probs_from_the_last_history_item(features):
    """encode_grouped(with_next_cond) = the head on the packed history's last item token; per-feature
    log-probs add up; an empty history gets zeros."""
    vocab = _vocab(features)
    model = _model(vocab)
    assert model.has_cond_head and len(model.cond_heads) == len(features)
    rng = np.random.default_rng(1)
    lens = [4, 0, 7]
    items = [torch.from_numpy(rng.integers(1, 31, size=n)) for n in lens]
    conds = [torch.from_numpy(rng.integers(1, vocab.n_conditions, size=n)) for n in lens]
    cu_h = torch.tensor(np.concatenate([[0], np.cumsum(lens)]), dtype=torch.int32)
    q_ids = torch.tensor([1, 2, 1])
    cu_q = torch.tensor([0, 1, 2, 3], dtype=torch.int32)
    with torch.no_grad():
        _, log_p = model.encode_grouped(torch.cat(items), torch.cat(conds), cu_h, q_ids, cu_q, with_next_cond=True)
        assert log_p.shape == (3, vocab.n_conditions)
        assert torch.equal(log_p[1], torch.zeros(vocab.n_conditions))
        f = vocab.cond_features()
        for b in (0, 2):
            _, h = model.encode_packed(items[b], conds[b], torch.tensor([0, lens[b]], dtype=torch.int32),
                                       with_item_hidden=True)
            lps = [torch.log_softmax(lg[-1], 0) for lg in model.cond_logits(h)]
            expect = torch.tensor([sum(float(lps[k][f[c, k]]) for k in range(len(features)))
                                   for c in range(vocab.n_conditions)])
            torch.testing.assert_close(log_p[b], expect.float(), atol=1e-5, rtol=1e-4)


def test_model_without_cond_head_and_old_versions_load(tmp_path):
    """cond_loss_weight 0 builds no head; a stored version from before the head (no cond_loss_weight in
    its model_config, no head weights) still loads, without a head."""
    import json

    from stages.model import store as model_store

    vocab = _vocab()
    old = _model(vocab, cond_loss_weight=0.0)
    assert not old.has_cond_head and not any(k.startswith("cond_heads") for k in old.state_dict())
    with pytest.raises(ValueError, match="next-condition head"):
        old.encode_grouped(torch.tensor([1]), torch.tensor([1]), torch.tensor([0, 1], dtype=torch.int32),
                           torch.tensor([1]), torch.tensor([0, 1], dtype=torch.int32), with_next_cond=True)
    mc = {k: v for k, v in old.cfg.__dict__.items() if k != "cond_loss_weight"}
    model_store.publish(str(tmp_path), "lum-2000-01-01", {
        "model.pt": old.state_dict(), "vocab.json": vocab.to_json(),
        "meta.json": json.dumps({"version": "lum-2000-01-01", "model_config": mc})})
    loaded = model_store.load(str(tmp_path), "lum-2000-01-01")
    assert not loaded.model.has_cond_head
    torch.testing.assert_close(loaded.model.item_embeddings(), old.item_embeddings())
    with pytest.raises(ValueError, match="cond_loss_weight"):
        ModelConfig(cond_loss_weight=-0.1).check()
