"""InfoNCE: matches a hand-computed softmax, dedups candidates, logQ and weights behave."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from stages.model.losses import info_nce_loss, popularity_log_q, sample_negatives


def _table(n=10, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    return emb, (lambda rows: emb[rows])


def test_matches_manual_softmax_with_unique_candidates():
    emb, table = _table()
    q = F.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    targets = torch.tensor([3, 5, 3, 7])  # item 3 twice: a single candidate, never its own negative
    loss, stats = info_nce_loss(q, targets, table, scale=20.0)
    cands = torch.tensor([3, 5, 7])
    logits = 20.0 * q @ emb[cands].t()
    labels = torch.tensor([0, 1, 0, 2])
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels))
    assert stats["candidates"] == 3


def test_sampled_negatives_and_logq():
    emb, table = _table()
    q = F.normalize(torch.randn(3, 8, generator=torch.Generator().manual_seed(2)), dim=-1)
    targets = torch.tensor([1, 2, 3])
    sampled = torch.tensor([2, 8, 9])
    counts = torch.tensor([0, 5, 1, 1, 1, 1, 1, 1, 10, 1.0])
    probs, log_q = popularity_log_q(counts)
    assert math.isclose(probs.sum().item(), 1.0, rel_tol=1e-6)
    loss, stats = info_nce_loss(q, targets, table, scale=10.0, sampled=sampled, log_q=log_q)
    cands = torch.tensor([1, 2, 3, 8, 9])
    logits = 10.0 * q @ emb[cands].t() - log_q[cands]
    torch.testing.assert_close(loss, F.cross_entropy(logits, torch.tensor([0, 1, 2])))
    assert stats["candidates"] == 5
    # more negatives -> larger loss than in-batch only (all else equal, without logQ)
    assert info_nce_loss(q, targets, table, scale=10.0, sampled=sampled)[0] > info_nce_loss(q, targets, table, scale=10.0)[0]


def test_weights_and_gradient_flow_to_scale():
    emb, table = _table()
    q = F.normalize(torch.randn(3, 8, generator=torch.Generator().manual_seed(3)), dim=-1)
    targets = torch.tensor([1, 2, 3])
    w = torch.tensor([1.0, 0.0, 1.0])
    loss_w = info_nce_loss(q, targets, table, scale=5.0, weights=w)[0]
    logits = 5.0 * q @ emb[torch.tensor([1, 2, 3])].t()
    nll = F.cross_entropy(logits, torch.tensor([0, 1, 2]), reduction="none")
    torch.testing.assert_close(loss_w, (nll[0] + nll[2]) / 2)
    scale = torch.tensor(5.0, requires_grad=True)
    info_nce_loss(q, targets, table, scale=scale)[0].backward()
    assert scale.grad is not None and scale.grad.abs() > 0


def test_sample_negatives_never_oov():
    g = torch.Generator().manual_seed(0)
    s = sample_negatives(500, None, 6, g)
    assert s.min() >= 1 and s.max() <= 5
    probs = torch.tensor([0.0, 0.0, 1.0])
    assert sample_negatives(20, probs, 3, g).eq(2).all()


def test_next_condition_loss_matches_hand_computed_cross_entropy():
    """Item n predicts cond n+1 of the same sequence; the last item of each sequence has no target."""
    from stages.model.losses import next_condition_loss

    g = torch.Generator().manual_seed(3)
    cond_features = torch.tensor([[0, 0], [1, 2], [2, 1], [3, 0]])      # 4 conditions, 2 features (4 and 3 values)
    conds = torch.tensor([1, 2, 3, 2, 1, 3])                           # sequences [1,2,3] [2] [1,3]
    cu = torch.tensor([0, 3, 4, 6])
    logits = [torch.randn(6, 4, generator=g), torch.randn(6, 3, generator=g)]
    total, n = next_condition_loss(logits, conds, cond_features, cu)
    expect = 0.0
    for src, nxt in [(0, 1), (1, 2), (4, 5)]:                          # (item position, next position)
        for k, lg in enumerate(logits):
            p = torch.softmax(lg[src], 0)
            expect += -math.log(float(p[int(cond_features[conds[nxt], k])]))
    assert n == 3
    assert math.isclose(float(total), expect, rel_tol=1e-5)
