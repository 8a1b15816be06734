"""Packing: best-fit rows and packed == unpacked loss and gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.model.losses import info_nce_loss, next_condition_loss
from stages.model.lum import ModelConfig, build_model
from stages.model.vocab import Vocab
from stages.training.packing import Sequences, best_fit_pack, make_batch, pack_fill, packed_step_batches


def test_best_fit_pack_fills_rows_and_keeps_every_sequence():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 30, size=300)
    rows = best_fit_pack(lengths, 64)
    flat = sorted(i for r in rows for i in r)
    assert flat == list(range(300))
    assert all(lengths[r].sum() <= 64 for r in rows)
    # best fit is close to the lower bound on the number of rows
    assert len(rows) <= int(np.ceil(lengths.sum() / 64)) + 3
    assert pack_fill(lengths, rows, 64) > 0.95


def test_best_fit_pack_rejects_too_long_and_is_deterministic():
    with pytest.raises(ValueError, match="sequence 1 has length 9"):
        best_fit_pack(np.array([3, 9]), 8)
    lengths = np.array([5, 3, 5, 2, 7, 1])
    assert best_fit_pack(lengths, 8) == best_fit_pack(lengths, 8)
    assert best_fit_pack(lengths, 8) == [[4, 5], [0, 1], [2, 3]]


def _tiny(seed: int = 0):
    rng = np.random.default_rng(seed)
    n_items = 40
    vocab = Vocab.build(range(100, 100 + n_items), [f"g{i % 5}" for i in range(n_items)])
    lens = [7, 1, 4, 9, 3, 6]
    items = [rng.integers(1, n_items + 1, size=n) for n in lens]
    conds = [vocab.item_conditions()[x] for x in items]
    torch.manual_seed(seed)
    model = build_model(ModelConfig(d_model=16, n_heads=2, n_layers=2, d_ff=32, dropout=0.0, max_len=10,
                                    d_item=16, d_feature=4, time_features=False), vocab)
    return vocab, Sequences.from_lists(items, conds), model


def _loss(model, batch):
    """InfoNCE mean + cond_loss_weight * next-condition CE sum / positions (as stages.training.loop does)."""
    out, h = model.encode_packed(batch.items, batch.conds, batch.cu_seqlens, batch.row_of_seq, batch.row_tokens,
                                 with_item_hidden=True)
    nce = info_nce_loss(out, batch.items, model.item_embeddings, scale=model.logit_scale)[0]
    cond_sum, _ = next_condition_loss(model.cond_logits(h), batch.conds, model.cond_features, batch.cu_seqlens)
    return nce + model.cfg.cond_loss_weight * cond_sum / batch.items.numel(), out


def test_packed_loss_and_grads_equal_unpacked():
    _, seqs, model = _tiny()
    rows = best_fit_pack(2 * seqs.lengths, 20)
    assert len(rows) < len(seqs)  # really packed: several sequences share a row
    (ids, row_of), = packed_step_batches(seqs, rows, rows_per_step=len(rows), row_tokens=20)
    packed = make_batch(seqs, ids, row_of, 20)
    loss_p, out_p = _loss(model, packed)
    grads_p = torch.autograd.grad(loss_p, [p for p in model.parameters() if p.requires_grad])

    # unpacked: one sequence at a time (own row each), same candidate set -> same loss; the
    # next-condition term of each sequence is computed on its own (no target across sequences)
    outs, cond_sum = [], 0.0
    for s in ids:
        one = make_batch(seqs, [s], None, None)
        o, h = model.encode_packed(one.items, one.conds, one.cu_seqlens, with_item_hidden=True)
        outs.append(o)
        cond_sum = cond_sum + next_condition_loss(model.cond_logits(h), one.conds, model.cond_features,
                                                  one.cu_seqlens)[0]
    out_u = torch.cat(outs)
    torch.testing.assert_close(out_u, out_p, atol=1e-5, rtol=1e-4)
    loss_u = info_nce_loss(out_u, packed.items, model.item_embeddings, scale=model.logit_scale)[0]
    loss_u = loss_u + model.cfg.cond_loss_weight * cond_sum / packed.items.numel()
    assert model.cfg.cond_loss_weight > 0 and float(cond_sum.detach()) > 0  # the new term really takes part
    grads_u = torch.autograd.grad(loss_u, [p for p in model.parameters() if p.requires_grad])
    torch.testing.assert_close(loss_u, loss_p, atol=1e-6, rtol=1e-5)
    for gu, gp in zip(grads_u, grads_p):
        torch.testing.assert_close(gu, gp, atol=1e-6, rtol=1e-4)


def test_packing_does_not_leak_across_sequences():
    _, seqs, model = _tiny(1)
    rows = best_fit_pack(2 * seqs.lengths, 20)
    (ids, row_of), = packed_step_batches(seqs, rows, rows_per_step=len(rows), row_tokens=20)
    base = model.encode_packed(*_fields(make_batch(seqs, ids, row_of, 20)))
    # change the items of the first sequence: other sequences' outputs must not move
    seqs.items[seqs.offsets[ids[0]]:seqs.offsets[ids[0] + 1]] = 1
    changed = model.encode_packed(*_fields(make_batch(seqs, ids, row_of, 20)))
    n0 = int(seqs.lengths[ids[0]])
    torch.testing.assert_close(base[n0:], changed[n0:])
    assert not torch.allclose(base[1:n0], changed[1:n0])


def _fields(b):
    return b.items, b.conds, b.cu_seqlens, b.row_of_seq, b.row_tokens
