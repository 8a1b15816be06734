"""Time features: gap and popularity buckets, training/inference parity, the popularity bonus in the loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.model.losses import info_nce_loss
from stages.model.lum import ModelConfig, build_model
from stages.model.timefeat import (
    AGE_BUCKETS,
    GAP_BUCKETS,
    POP_BUCKETS,
    age_buckets,
    build_popularity,
    first_event_days,
    gap_bucket_of,
    gap_buckets,
    share_buckets,
)
from stages.model.vocab import Vocab

DAY = 86_400


def _vocab():
    return Vocab.build(range(10, 40), [f"g{i % 4}" for i in range(30)], features=("category",), scenarios=[])


def _model(vocab, **kw):
    torch.manual_seed(0)
    cfg = {"d_model": 16, "n_heads": 2, "n_layers": 2, "d_ff": 32, "max_len": 12, "d_item": 8, "d_feature": 4,
           "time_features": True}
    cfg.update(kw)
    model = build_model(ModelConfig(**cfg), vocab).eval()
    with torch.no_grad():  # a trained-looking head: the zero init would hide a wrong query state
        model.pop_head.weight.normal_(0, 0.5)
    return model


def test_gap_buckets_are_log2_seconds_and_restart_per_sequence():
    ts = torch.tensor([100, 100, 101, 104, 5, 5 + DAY], dtype=torch.int64)
    cu = torch.tensor([0, 4, 6], dtype=torch.int32)
    assert gap_buckets(ts, cu).tolist() == [0, 1, 2, 3, 0, 1 + int(np.floor(np.log2(1 + DAY)))]
    assert gap_bucket_of(torch.tensor([-5, 10**12])).tolist() == [1, GAP_BUCKETS - 1]


def test_share_buckets_mean_the_same_at_any_traffic():
    counts = np.array([[0, 1, 2, 4, 93], [0, 10, 20, 40, 930]])
    b = share_buckets(counts)
    assert b[0, 0] == 0 and (b[0] == b[1]).all()
    assert list(b[0, 1:]) == sorted(b[0, 1:], reverse=True)  # more popular, smaller bucket
    assert b[0, 4] == 1 + int(np.floor(-2 * np.log2(0.93)))
    assert share_buckets(np.array([1e-12, 1.0]) * 1e13).max() == POP_BUCKETS - 1


def test_popularity_counts_only_the_window_before_each_day():
    # item row 1: 5 events on day 10; item row 2: 1 event on day 12; 3 rows (row 0 = OOV)
    pop = build_popularity(np.array([10, 12, 12]), np.array([1, 2, 0]), np.array([5, 1, 7]), n_item_rows=3,
                           first_day=10, last_day=14, window=2)
    b = pop.buckets
    assert b[0].tolist() == [0, 0, 0]          # day 10 sees days 8-9: nothing
    assert b[1, 1] > 0 and b[1, 2] == 0        # day 11 sees day 10
    assert b[2, 1] > 0                         # day 12 sees days 10-11
    assert b[3, 1] == 0 and b[3, 2] > 0        # day 13 sees days 11-12: row 1's events are out of the window
    assert b[:, 0].tolist() == [0] * 5         # the OOV row never counts
    got = pop.at(torch.tensor([11, 13, 99]), torch.tensor([2, 1]))
    assert got.tolist() == [[0, b[1, 1]], [b[3, 2], 0], [b[4, 2], b[4, 1]]]
    with pytest.raises(ValueError, match="window 0"):
        build_popularity(np.zeros(0), np.zeros(0), np.zeros(0), n_item_rows=3, first_day=1, last_day=2, window=0)


def test_age_buckets_are_half_octaves_of_days_since_the_first_event():
    assert age_buckets(torch.tensor([-3, 0, 1, 2, 3, 4, 10**9])).tolist() == [0, 0, 1, 3, 4, 5, AGE_BUCKETS - 1]
    first = first_event_days(np.array([12, 10, 11, 15]), np.array([2, 2, 0, 9]), n_item_rows=4)
    assert first[2] == 10 and first[0] > 10**15 and first[1] > 10**15  # OOV and out-of-range rows: no event
    pop = build_popularity(np.array([10, 12]), np.array([1, 2]), np.array([3, 1]), n_item_rows=3,
                           first_day=10, last_day=14, window=30)
    pop.first_day = first_event_days(np.array([10, 12]), np.array([1, 2]), n_item_rows=3)
    assert pop.width == POP_BUCKETS + AGE_BUCKETS
    days, rows = torch.tensor([11, 14]), torch.tensor([1, 2])
    pop_idx, age_idx = pop.columns(days, rows)
    torch.testing.assert_close(pop_idx, pop.at(days, rows))
    # day 11: row 1 is 1 day old, row 2 has no event yet; day 14: 4 and 2 days old
    assert (age_idx - POP_BUCKETS).tolist() == [[1, 0], [5, 3]]
    w = torch.randn(2, pop.width)
    want = w.gather(1, pop_idx) + w.gather(1, age_idx)
    torch.testing.assert_close(pop.bias(w, days, rows), want)
    feats = pop.item_features(4)   # day 14, every row: two-hot, one popularity and one age bucket each
    assert feats.shape == (3, pop.width) and (feats.sum(1) == 2).all()
    assert feats[2, POP_BUCKETS + 3] == 1 and feats[1, POP_BUCKETS + 5] == 1 and feats[0, POP_BUCKETS] == 1
    plain = build_popularity(np.array([10]), np.array([1]), np.array([3]), n_item_rows=3, first_day=10,
                             last_day=11, window=30)
    assert plain.width == POP_BUCKETS and (plain.item_features(1).sum(1) == 1).all()
    with pytest.raises(ValueError, match="item_age = true needs time_features"):
        ModelConfig(time_features=False, item_age=True).check()
    assert ModelConfig(item_age=True).knowledge_dim == ModelConfig().d_model + POP_BUCKETS + AGE_BUCKETS


def test_a_query_asked_at_time_t_equals_training_on_a_behaviour_at_t():
    """The grouped query with query_ts gets the gap the training forward gives a condition token at that time."""
    vocab = _vocab()
    model = _model(vocab)
    items = torch.tensor([1, 5, 9, 3])
    conds = torch.from_numpy(vocab.item_conditions()[items.numpy()])
    ts = torch.tensor([1000, 1060, 5000, 9000], dtype=torch.int64)
    q, q_ts = torch.tensor([2]), torch.tensor([9000 + 3 * DAY])
    o, w = model.encode_grouped(items, conds, torch.tensor([0, 4], dtype=torch.int32), q,
                                torch.tensor([0, 1], dtype=torch.int32), hist_ts=ts, query_ts=q_ts,
                                with_popularity=True)
    o_tr, w_tr = model.encode_packed(torch.cat([items, torch.tensor([1])]), torch.cat([conds, q]),
                                     torch.tensor([0, 5], dtype=torch.int32), ts=torch.cat([ts, q_ts]),
                                     with_popularity=True)
    torch.testing.assert_close(o, o_tr[-1:], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(w, w_tr[-1:], atol=1e-5, rtol=1e-4)
    o_other = model.encode_grouped(items, conds, torch.tensor([0, 4], dtype=torch.int32), q,
                                   torch.tensor([0, 1], dtype=torch.int32), hist_ts=ts, query_ts=q_ts + 300 * DAY)
    assert not torch.allclose(o, o_other)  # how long the user has been away changes the knowledge
    assert model.cfg.knowledge_dim == 16 + POP_BUCKETS
    assert ModelConfig(time_features=False).knowledge_dim == ModelConfig().d_model


def test_info_nce_adds_the_popularity_bonus_to_each_candidate():
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(6, 4), dim=-1)
    q = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    targets = torch.tensor([1, 2, 2])
    bonus = torch.randn(3, 6)
    loss, _ = info_nce_loss(q, targets, lambda r: emb[r], scale=5.0, bias=lambda cands: bonus[:, cands])
    logits = 5.0 * q @ emb[torch.tensor([1, 2])].t() + bonus[:, [1, 2]]
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 1]))
    torch.testing.assert_close(loss, expected)
    plain, _ = info_nce_loss(q, targets, lambda r: emb[r], scale=5.0)
    assert not torch.allclose(plain, loss)
