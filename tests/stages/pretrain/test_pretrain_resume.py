"""A run killed midway resumes from its last checkpoint and ends where an uninterrupted run ends."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.core.config import from_mapping
from stages.model import store as model_store
from stages.model.lum import ModelConfig, build_model
from stages.model.vocab import Vocab
from stages.pretrain import stage as pretrain
from stages.training import loop as train_loop
from stages.training.packing import Sequences
from tests.stages.pretrain_fixtures import TINY, make_warehouse


def _setup(seed=0):
    rng = np.random.default_rng(seed)
    vocab = Vocab.build(range(1, 31), [f"g{i % 3}" for i in range(30)])
    items = [rng.integers(1, 31, size=n) for n in rng.integers(1, 12, size=30)]
    seqs = Sequences.from_lists(items, [vocab.item_conditions()[x] for x in items])
    torch.manual_seed(0)
    model = build_model(ModelConfig(d_model=16, n_heads=2, n_layers=1, d_ff=32, dropout=0.2, max_len=12,
                                    d_item=8, d_feature=4, time_features=False), vocab)
    counts = torch.from_numpy(np.bincount(seqs.items, minlength=31).astype(np.float64))
    return model, seqs, counts


CFG = train_loop.TrainConfig(epochs=3, row_tokens=24, rows_per_step=3, warmup_steps=2, sampled_negatives=5,
                             negative_sampling="popularity", logq=True, checkpoint_every=2, log_every_s=1000)


def test_killed_train_resumes_to_identical_weights(tmp_path):
    model_a, seqs, counts = _setup()
    full = train_loop.train(model_a, seqs, CFG, item_counts=counts, ckpt_path=tmp_path / "a.pt")
    assert full["steps"] >= 6

    model_b, _, _ = _setup()
    with pytest.raises(RuntimeError, match="stopped after step 5"):
        train_loop.train(model_b, seqs, CFG, item_counts=counts, ckpt_path=tmp_path / "b.pt", stop_after_step=5)
    assert model_store.load_checkpoint(tmp_path / "b.pt")["step"] == 4
    model_c, _, _ = _setup(seed=0)
    torch.manual_seed(123)  # the resumed process starts with a different RNG: the checkpoint restores it
    with torch.no_grad():
        for p in model_c.parameters():
            p.add_(1.0)  # and different weights
    resumed = train_loop.train(model_c, seqs, CFG, item_counts=counts, ckpt_path=tmp_path / "b.pt")
    assert resumed["resumed_from"] == 4
    for (k, va), vc in zip(model_a.state_dict().items(), model_c.state_dict().values()):
        torch.testing.assert_close(va, vc, rtol=0, atol=0, msg=k)
    assert resumed["loss"] == pytest.approx(full["loss"], abs=0)
    assert resumed["loss_curve"] == full["loss_curve"]  # the checkpoint carries the curve of the first steps


def test_pretrain_run_killed_then_rerun_resumes(warehouse, tmp_path, monkeypatch):
    d1, = make_warehouse(warehouse, days=1)
    other = str(tmp_path / "other")
    make_warehouse(other, days=1)
    cfg = from_mapping(pretrain.Config, {**TINY, "checkpoint_every": 2})
    full = pretrain.run(cfg, ds=d1, warehouse=other)

    real = train_loop.train
    monkeypatch.setattr(train_loop, "train", lambda *a, **kw: real(*a, stop_after_step=3, **kw))
    with pytest.raises(RuntimeError, match="stopped after step 3"):
        pretrain.run(cfg, ds=d1, warehouse=warehouse)
    assert model_store.list_versions(warehouse) == []           # nothing half-published
    assert (model_store.run_dir(warehouse, "lum-" + d1) / "checkpoint.pt").is_file()
    monkeypatch.setattr(train_loop, "train", real)
    s = pretrain.run(cfg, ds=d1, warehouse=warehouse)
    assert s["resumed_from"] == 2 and s["loss_curve"] == full["loss_curve"]
    a = model_store.load(other, "lum-" + d1).model.state_dict()
    b = model_store.load(warehouse, "lum-" + d1).model.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
