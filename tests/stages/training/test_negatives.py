"""negative_sampling="all": the InfoNCE candidates are the whole catalog (exact softmax), picked by "auto" for
small catalogs; the first training step's loss equals a full cross-entropy over every item row."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stages.model.lum import ModelConfig, build_model
from stages.model.vocab import Vocab
from stages.training import loop as train_loop
from stages.training.packing import Sequences, make_batch
from stages.training.steps import epoch_rows


def test_resolve_negative_sampling():
    assert train_loop.resolve_negative_sampling("auto", 3707) == "all"
    assert train_loop.resolve_negative_sampling("auto", train_loop.ALL_ITEMS_MAX + 2) == "uniform"
    assert train_loop.resolve_negative_sampling("popularity", 10) == "popularity"
    with pytest.raises(ValueError, match="negative_sampling"):
        train_loop.resolve_negative_sampling("everything", 10)
    assert train_loop.resolve_negative_sampling("auto", None, logq=True) == "auto"   # catalog not known yet
    assert train_loop.resolve_negative_sampling("auto", 3707, logq=True) == "all"     # logq unused there


def test_all_items_loss_is_full_softmax():
    rng = np.random.default_rng(0)
    vocab = Vocab.build(range(1, 31), [f"g{i % 3}" for i in range(30)])
    items = [rng.integers(1, 31, size=n) for n in (5, 7, 3, 6)]
    seqs = Sequences.from_lists(items, [vocab.item_conditions()[x] for x in items])
    torch.manual_seed(0)
    model = build_model(ModelConfig(d_model=16, n_heads=2, n_layers=1, d_ff=32, dropout=0.0, max_len=8, d_item=8,
                                    d_feature=4, cond_loss_weight=0.0, time_features=False), vocab)
    cfg = train_loop.TrainConfig(max_steps=1, row_tokens=16, rows_per_step=8, lr=0.0, warmup_steps=1,
                                 negative_sampling="all", sampled_negatives=0, log_every_s=1000)
    rows = epoch_rows(seqs, cfg, 0)
    ids = [s for r in rows for s in r]
    batch = make_batch(seqs, ids, [j for j, r in enumerate(rows) for _ in r], cfg.row_tokens)
    with torch.no_grad():
        out = model.encode_packed(batch.items, batch.conds, batch.cu_seqlens, batch.row_of_seq, cfg.row_tokens)
        logits = model.logit_scale * out @ model.item_embeddings()[1:].t()      # every item row but OOV
        expected = F.cross_entropy(logits, batch.items - 1).item()
    counts = torch.from_numpy(np.bincount(seqs.items, minlength=31).astype(np.float64))
    stats = train_loop.train(model, seqs, cfg, item_counts=counts, ckpt_path=None)
    assert stats["loss"] == pytest.approx(expected, rel=1e-5)
