"""``lum bench pack``: training tokens/s of packed vs padded batches on real sequence lengths.

Lengths: the newest ``user_sequences`` partition, else the ML-1M ratings file (per-user counts), capped at
``max_len``; a seeded sample of ``users`` sequences gets random ids. Both variants run one pass (forward +
InfoNCE + backward + AdamW step) of the same model over the same sequences, interleaved step by step so that a
shared machine's changing load hits both alike. Packed: best-fit rows of ``row_tokens``, ``rows_per_step`` per
step. Padded: random batches with the same mean real tokens per step, right-padded to their longest sequence
(the loss ignores pads, and causal attention keeps real tokens from seeing them). Reported: real tokens/s (wall
clock) and per CPU-second, the speedup against TARGET, and the padding share. With ``threads`` = 1 both do the
same work per token, so the speedup is the padding saved; with more, packed steps (fewer tensor rows)
parallelise worse and a loaded machine's OpenMP spin-waits measure the load rather than packing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from stages.core.config import to_dict
from stages.ingest.movielens import locate_movielens
from stages.model.losses import info_nce_loss
from stages.model.lum import ModelConfig, build_model
from stages.model.vocab import Vocab
from stages.training.packing import Sequences, best_fit_pack, make_batch, pack_fill
from stages.warehouse.facade import Warehouse

log = logging.getLogger(__name__)

TARGET = 1.8  # packed / padded tokens/s the packing is expected to reach on real length distributions
N_ITEMS = 3706  # random item ids come from a catalog the size of ML-1M's rated movies


@dataclass(frozen=True)
class Config:
    users: int = 1200        # sequences sampled from the length distribution (enough steps for a stable rate)
    max_len: int = 200       # behaviours per sequence cap: pretrain's default
    row_tokens: int = 400    # packed row budget: pretrain's default (2 * max_len)
    rows_per_step: int = 20  # packed rows per step; the padded batch size matches its real tokens
    d_model: int = 64        # model width (and item embedding width): pretrain's default
    seed: int = 0            # sample, ids and model init
    repeats: int = 1         # passes over the batches (more: longer, steadier timings)
    threads: int = 1         # torch intra-op threads during the bench (restored after): 1 compares work per token


QUICK = {"users": 240, "repeats": 1}  # `--quick`: a smoke-sized sample


def run(cfg: Config, *, warehouse: Warehouse | str) -> dict:
    """Time packed vs padded training steps; returns {"table", "summary", "options", ...} for the report."""
    if cfg.threads < 1:
        raise ValueError(f"bench pack: threads must be >= 1, got {cfg.threads}")
    wh = Warehouse.of(warehouse)
    before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, wh)
    finally:
        torch.set_num_threads(before)


def ml1m_lengths(wh: Warehouse, max_len: int) -> tuple[np.ndarray, str]:
    """Per-user behaviour counts capped at ``max_len`` and where they came from."""
    try:
        if wh.exists("user_sequences"):
            ds = wh.partitions("user_sequences")[-1]
            t = wh.read("user_sequences", ds=ds, columns=["history_len"])
            if t.num_rows:
                return np.minimum(t.column("history_len").to_numpy(), max_len), f"user_sequences ds={ds}"
    except (ValueError, OSError) as exc:
        log.info("bench pack: warehouse lengths unavailable (%s); using the ML-1M file", exc)
    path = locate_movielens("movielens-1m")
    inter = next(p for p in path.iterdir() if p.name.endswith(".inter")) if path.is_dir() else path
    users = pd.read_csv(inter, sep="\t", quoting=3, usecols=[0]).iloc[:, 0]
    return np.minimum(users.value_counts().to_numpy(), max_len), str(inter)


def _step(model, opt, batch, weights) -> tuple[float, float, int]:
    """One training step (forward, InfoNCE, backward, AdamW); returns (wall s, process CPU s, real tokens)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = model.encode_packed(batch.items, batch.conds, batch.cu_seqlens, batch.row_of_seq, batch.row_tokens)
    loss, _ = info_nce_loss(out, batch.items, model.item_embeddings, scale=model.logit_scale, weights=weights)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    real = int(weights.sum()) * 2 if weights is not None else batch.n_tokens
    return time.perf_counter() - t0, time.process_time() - c0, real


def _run(cfg: Config, wh: Warehouse) -> dict:
    lengths_all, source = ml1m_lengths(wh, cfg.max_len)
    rng = np.random.default_rng(cfg.seed)
    lengths = rng.choice(lengths_all, size=min(cfg.users, lengths_all.size), replace=False)
    n_items = N_ITEMS
    vocab = Vocab.build(range(1, n_items + 1), [f"g{i % 18}" for i in range(n_items)])
    icond = vocab.item_conditions()
    items = [rng.integers(1, n_items + 1, size=int(n)) for n in lengths]
    seqs = Sequences.from_lists(items, [icond[x] for x in items])
    row_tokens, rps = cfg.row_tokens, cfg.rows_per_step

    rows = best_fit_pack(2 * seqs.lengths, row_tokens)
    rows = [rows[i] for i in rng.permutation(len(rows))]
    packed = []
    for s in range(0, len(rows), rps):
        ids = [i for r in rows[s:s + rps] for i in r]
        row_of = [j for j, r in enumerate(rows[s:s + rps]) for _ in r]
        packed.append((make_batch(seqs, ids, row_of, row_tokens), None))
    batch_size = max(1, round(rps * row_tokens / (2 * float(lengths.mean()))))
    order = rng.permutation(len(seqs))
    padded, pad_tokens, all_tokens = [], 0, 0
    for s in range(0, len(order), batch_size):
        ids = order[s:s + batch_size]
        lmax = int(seqs.lengths[ids].max())
        p_items = [np.pad(items[i], (0, lmax - len(items[i]))) for i in ids]   # pad behaviour: row 0, cond 0
        p_conds = [np.pad(icond[items[i]], (0, lmax - len(items[i]))) for i in ids]
        ps = Sequences.from_lists(p_items, p_conds)
        w = torch.from_numpy(np.concatenate([np.arange(lmax) < len(items[i]) for i in ids]).astype(np.float32))
        padded.append((make_batch(ps, list(range(len(ids))), None, None), w))
        pad_tokens += 2 * int((w == 0).sum())
        all_tokens += 2 * w.numel()

    model_cfg = ModelConfig(d_model=cfg.d_model, d_item=cfg.d_model, max_len=cfg.max_len, dropout=0.0)
    models = {}
    for name in ("packed", "padded"):
        torch.manual_seed(cfg.seed)
        model = build_model(model_cfg, vocab)
        model.attention_backend = "sdpa_mask"
        models[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    runs = {"packed": packed, "padded": padded}
    for name, batches in runs.items():  # warm-up step each
        _step(*models[name], *batches[0])
    # interleave the two variants step by step: the shared machine's load hits both alike
    totals = {name: [0.0, 0.0, 0] for name in runs}
    for _ in range(cfg.repeats):
        for i in range(max(len(packed), len(padded))):
            for name, batches in runs.items():
                if i < len(batches):
                    dt, cpu, n = _step(*models[name], *batches[i])
                    totals[name][0] += dt
                    totals[name][1] += cpu
                    totals[name][2] += n
    results = {name: {"variant": name, "steps": len(runs[name]), "seconds": round(secs, 2), "real_tokens": real,
                      "tokens_per_s": round(real / max(secs, 1e-9), 1), "cpu_seconds": round(cpu, 2),
                      "tokens_per_cpu_s": round(real / max(cpu, 1e-9), 1)}
               for name, (secs, cpu, real) in totals.items()}
    speedup = results["packed"]["tokens_per_s"] / max(results["padded"]["tokens_per_s"], 1e-9)
    cpu_speedup = results["packed"]["tokens_per_cpu_s"] / max(results["padded"]["tokens_per_cpu_s"], 1e-9)
    results["packed"]["padding_share"] = round(1 - pack_fill(2 * seqs.lengths, rows, row_tokens), 4)
    results["padded"]["padding_share"] = round(pad_tokens / max(all_tokens, 1), 4)
    summary = {"speedup": round(speedup, 2), "cpu_time_speedup": round(cpu_speedup, 2), "target": TARGET,
               "meets_target": speedup >= TARGET, "threads": torch.get_num_threads(),
               "packed_tokens_per_s": results["packed"]["tokens_per_s"],
               "padded_tokens_per_s": results["padded"]["tokens_per_s"]}
    return {"table": [results["packed"], results["padded"]], "summary": summary, "options": to_dict(cfg),
            "lengths_source": source, "users": int(lengths.size), "mean_len": float(lengths.mean()),
            "padded_batch_size": batch_size, "torch_threads": torch.get_num_threads()}
