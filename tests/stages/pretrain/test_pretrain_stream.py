"""Streaming pretrain: a rank reads only its users, a shuffle buffer bounds what it holds, and with one buffer and
one rank the batches and the trained weights are those of the whole partition in memory."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from stages.core.config import from_mapping
from stages.core.hashing import shard_of
from stages.model.lum import ModelConfig, build_model
from stages.model.store import load as load_version
from stages.pretrain import data as pretrain_data
from stages.pretrain import stage as pretrain
from stages.pretrain import stream
from stages.pretrain.data import load_sequences, training_windows
from stages.training import loop as train_loop
from stages.training.packing import Sequences
from stages.training.steps import MemorySteps
from stages.warehouse.facade import Warehouse
from tests.stages.pretrain_fixtures import TINY, make_warehouse

MAX_LEN = 4  # short windows: the fixture's users (1..11 behaviours) get several each
CFG = train_loop.TrainConfig(epochs=2, row_tokens=16, rows_per_step=3, warmup_steps=2, sampled_negatives=5,
                             log_every_s=1000)
PLAN = stream.Plan(max_len=MAX_LEN, windows=0, timed=True, eval=False)


@pytest.fixture(scope="module")
def wh(tmp_path_factory):
    """Two days; day 2's rows written in descending user order (the stream sorts each buffer by user)."""
    path = str(tmp_path_factory.mktemp("stream") / "wh")
    _, d2 = make_warehouse(path, days=2)
    out = Warehouse(path)
    rows = out.read("user_sequences", ds=d2)
    out.write_partition("user_sequences", rows.take(np.argsort(-rows.column("user_id").to_numpy())), ds=d2)
    return out


def _memory(wh: Warehouse, ds: str) -> Sequences:
    """The in-memory path: the whole partition, users in user_id order, every window."""
    data = load_sequences(wh, ds)
    return Sequences.from_lists(*training_windows(data.items, data.conds, MAX_LEN, 0, ts=data.ts))


def _batches(source, epochs: int = 2, rank: int = 0, world: int = 1, steps: int | None = None) -> list:
    steps = source.steps_per_epoch(CFG, rank, world) if steps is None else steps
    return [b for e in range(epochs) for b in source.epoch(CFG, e, rank, world, steps)]


def _seqs_of(batches) -> list[tuple]:
    """Every non-idle sequence of the batches as (items, ts) tuples, sorted: what was trained, with repeats."""
    out = []
    for batch, idle in batches:
        if idle:
            continue
        cu = batch.cu_seqlens.tolist()
        out += [(tuple(batch.items[a:b].tolist()), tuple(batch.ts[a:b].tolist())) for a, b in zip(cu, cu[1:])]
    return sorted(out)


def test_one_buffer_one_rank_is_the_in_memory_path(wh):
    """Batch for batch equal to the whole partition in memory, and so are the weights trained on them."""
    ds = "2000-01-02"
    mem = _memory(wh, ds)
    s = stream.open_stream(wh, ds, PLAN, shuffle_users=len(mem), row_tokens=CFG.row_tokens)
    assert s.sequences == len(mem) > 24 and s.users == 24 and len(s.steps.stats.buffer_rows) == 1
    assert s.vocab.to_json() == load_sequences(wh, ds).vocab.to_json()
    np.testing.assert_array_equal(s.item_counts, np.bincount(mem.items, minlength=s.vocab.n_item_rows))
    want, got = _batches(MemorySteps(mem)), _batches(s.steps)
    assert len(got) == len(want) > 4
    for (a, idle_a), (b, idle_b) in zip(want, got):
        assert idle_a == idle_b is False
        for name in ("items", "conds", "cu_seqlens", "row_of_seq", "ts"):
            torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0)
    weights = []
    for source in (mem, s.steps):
        torch.manual_seed(0)
        model = build_model(ModelConfig(d_model=16, n_heads=2, n_layers=1, d_ff=32, dropout=0.1, max_len=MAX_LEN,
                                        d_item=8, d_feature=4, time_features=False), s.vocab)
        train_loop.train(model, source, CFG, item_counts=torch.from_numpy(s.item_counts), ckpt_path=None)
        weights.append(model.state_dict())
    for k in weights[0]:
        torch.testing.assert_close(weights[0][k], weights[1][k], rtol=0, atol=0, msg=k)


def test_small_buffers_train_every_sequence_once_per_epoch_and_hold_at_most_the_buffer(wh):
    ds = "2000-01-02"
    mem = _memory(wh, ds)
    want = _seqs_of(_batches(MemorySteps(mem), epochs=1))
    s = stream.open_stream(wh, ds, PLAN, shuffle_users=7, row_tokens=CFG.row_tokens)
    assert len(s.steps.stats.buffer_rows) == -(-len(mem) // 7)
    for epoch in range(2):
        steps = s.steps.steps_per_epoch(CFG, 0, 1)
        got = list(s.steps.epoch(CFG, epoch, 0, 1, steps))
        assert len(got) == steps and _seqs_of(got) == want  # each sequence exactly once, nothing else
    assert s.steps.peak_held == 7  # the loader never held more than one buffer of sequences


def test_a_rank_reads_and_trains_only_its_own_users(wh, monkeypatch):
    ds, world = "2000-01-02", 3
    seen = []
    for rank in range(world):
        batches = list(stream._rank_batches(wh, ds, index=rank, count=world, columns=["user_id", "ts"], batch_rows=4))
        assert all(b.num_rows <= 4 and b.schema.names == ["user_id", "ts"] for b in batches)
        ids = np.concatenate([b.column("user_id").to_numpy() for b in batches])
        assert ids.size and (shard_of(ids, world) == rank).all()
        seen.append(ids)
    assert sorted(np.concatenate(seen).tolist()) == list(range(1, 25))  # every user once, on one rank
    cfg = dataclasses.replace(CFG, rows_per_step=4)
    shares, trained = [], []
    for rank in range(world):  # each rank's stream as it runs under a process group of 3
        monkeypatch.setattr(stream, "dist_info", lambda rank=rank: (None, rank, world))
        s = stream.open_stream(wh, ds, PLAN, shuffle_users=5, row_tokens=CFG.row_tokens)
        shares.append(s.steps)
    steps = max(src.steps_per_epoch(cfg, r, world) for r, src in enumerate(shares))
    for rank, src in enumerate(shares):
        batches = list(src.epoch(cfg, 0, rank, world, steps))
        assert len(batches) == steps
        trained += _seqs_of(batches)
    assert sorted(trained) == _seqs_of(_batches(MemorySteps(_memory(wh, ds)), epochs=1))


def test_pretrain_streams_without_loading_the_partition(wh, monkeypatch, copy_warehouse):
    """A run (no eval) never loads the partition in memory; a warm start trains the changed users only."""
    path = copy_warehouse(wh.uri)
    d1, d2 = "2000-01-01", "2000-01-02"

    def refuse(*a, **kw):
        raise AssertionError("load_sequences called by a training run")

    monkeypatch.setattr(pretrain_data, "load_sequences", refuse)
    monkeypatch.setattr(pretrain, "load_sequences", refuse)
    cfg = from_mapping(pretrain.Config, {**TINY, "shuffle_users": 5})
    s1 = pretrain.run(cfg, ds=d1, warehouse=path)
    assert s1["users"] == 24 and s1["steps"] > 0
    s2 = pretrain.run(cfg, ds=d2, warehouse=path)
    assert s2["parent"] == "lum-" + d1 and s2["users"] == 12 and s2["sequences"] == 12
    assert load_version(path, "lum-" + d2).meta["metrics"]["train_sequences"] == 12
    with pytest.raises(ValueError, match="shuffle_users must be >= 1"):
        from_mapping(pretrain.Config, {"shuffle_users": 0}).check()
