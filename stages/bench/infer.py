"""``lum bench infer``: users/s of grouped-query vs naive inference, same model and users, one run.

Each user has a history of ``prefix_tokens`` tokens (``prefix_tokens / 2`` behaviours: every behaviour is a
condition token plus an item token) and ``n_conditions`` query conditions. Both modes go through the stage's
own path (``pack_by_budget`` -> ``build_batch`` -> ``stages.infer.stage.encode``) on a randomly initialised LUM of
the pretrain default size (d_model 64, 2 layers, 2 heads; weights do not change the cost). Grouped costs
``P + N`` tokens per user, naive ``N (P + 1)``: at P = 256, N = 16 naive pushes 15x more tokens through
the MLPs and recomputes the history's attention N times.

Reported per mode: users/s (median of ``repeats`` timed passes after one warm-up pass), ms per user and
useful TFLOP/s, where "useful" is the grouped computation (the minimum needed to answer every query;
matmul FLOPs only: 2 * D * (4 D + 2 d_ff) per token per layer for the projections and MLP, plus
4 * Dh * H * (P (P + 1) / 2 + N P + N) per user per layer for QK^T and AV), so both modes are charged the
same work and the ratio of their TFLOP/s equals their speed ratio. Also reports max |grouped - naive|.
Limits: CPU timings on a shared 2-core machine vary by ~10-20%; quick mode is a smoke test, not a number.
"""

from __future__ import annotations

import platform
import statistics
import time
from typing import Any

import numpy as np

DEFAULTS: dict[str, Any] = {
    "users": 256,  # users per timed pass (same users for both modes)
    "prefix_tokens": 256,  # history tokens per user (= 128 behaviours)
    "n_conditions": 16,  # query conditions per user (N)
    "token_budget": 16384,  # tokens per forward, as in stages.infer.stage.Config
    "d_model": 64, "n_heads": 2, "n_layers": 2, "d_ff": 256,  # the pretrain ModelConfig defaults
    "n_items": 3_000, "n_categories": 18,  # vocabulary size (ML-1M-like)
    "repeats": 3,  # timed passes per mode (median reported)
    "seed": 0,
    "device": "auto",
    "threads": 0,  # torch CPU threads (0 = torch's default); 1 gives steadier numbers on a shared machine
}
QUICK: dict[str, Any] = {"users": 8, "prefix_tokens": 32, "n_conditions": 4, "repeats": 1, "n_items": 50}


def useful_flops(o: dict[str, Any]) -> float:
    """Matmul FLOPs of the grouped computation for ``users`` users (see module docstring)."""
    d, ff, layers = o["d_model"], o["d_ff"], o["n_layers"]
    p, n = o["prefix_tokens"], o["n_conditions"]
    per_token = 2 * d * (4 * d + 2 * ff)
    attn = 4 * d * (p * (p + 1) / 2 + n * p + n)  # H * Dh = d
    return float(o["users"]) * layers * ((p + n) * per_token + attn)


def _setup(o: dict[str, Any]):
    import torch

    from stages.infer.chunks import build_batch, pack_by_budget
    from stages.model.lum import ModelConfig, build_model
    from stages.model.vocab import Vocab

    if o["prefix_tokens"] % 2 or o["prefix_tokens"] < 2:
        raise ValueError(f"prefix_tokens must be an even number >= 2, got {o['prefix_tokens']}")
    cats = [f"c{k:02d}" for k in range(o["n_categories"])]
    vocab = Vocab.build(range(o["n_items"]), [cats[i % len(cats)] for i in range(o["n_items"])])
    if o["n_conditions"] > vocab.n_conditions - 1:
        raise ValueError(f"n_conditions {o['n_conditions']} > {vocab.n_conditions - 1} categories in the vocabulary")
    torch.manual_seed(o["seed"])
    behaviours = o["prefix_tokens"] // 2
    cfg = ModelConfig(d_model=o["d_model"], n_heads=o["n_heads"], n_layers=o["n_layers"], d_ff=o["d_ff"],
                      max_len=behaviours, dropout=0.0)
    device = o["device"] if o["device"] != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(cfg, vocab).to(device).eval()
    rng = np.random.default_rng(o["seed"])
    items = [rng.integers(1, vocab.n_item_rows, size=behaviours) for _ in range(o["users"])]
    conds = [rng.integers(1, vocab.n_conditions, size=behaviours) for _ in range(o["users"])]
    queries = [rng.choice(np.arange(1, vocab.n_conditions), size=o["n_conditions"], replace=False)
               for _ in range(o["users"])]

    def batches(mode: str):
        per_user = behaviours * 2 + o["n_conditions"] if mode == "grouped" else o["n_conditions"] * (2 * behaviours + 1)
        budget = o["token_budget"] if mode == "grouped" else o["token_budget"] * o["n_conditions"]
        return [build_batch(s, items, conds, queries, device=device)
                for s in pack_by_budget([per_user] * o["users"], budget)]

    return model, batches, device


def _time_mode(model, batches, mode: str, repeats: int, device: str) -> tuple[list[float], Any]:
    import torch

    from stages.infer.stage import encode

    def one_pass():
        outs = [encode(model, b, mode) for b in batches]
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return outs

    one_pass()  # warm-up: allocator, kernel compilation / autotune
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        outs = one_pass()
        times.append(time.perf_counter() - start)
    return times, torch.cat(outs).float().cpu()


def run_bench(opts: dict[str, Any], *, quick: bool, warehouse: str) -> dict[str, Any]:
    """Grouped vs naive users/s; ``warehouse`` is unused (the bench needs no tables)."""
    import torch

    unknown = sorted(set(opts) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown bench infer option(s): {', '.join(unknown)}; known: {', '.join(DEFAULTS)}")
    o = {**DEFAULTS, **(QUICK if quick else {}), **opts}
    if int(o["threads"]) > 0:
        torch.set_num_threads(int(o["threads"]))
    model, batches, device = _setup(o)
    flops = useful_flops(o)
    rows, outs = [], {}
    for mode in ("grouped", "naive"):
        b = batches(mode)
        times, outs[mode] = _time_mode(model, b, mode, o["repeats"], device)
        sec = statistics.median(times)
        rows.append({"mode": mode, "device": device, "users": o["users"], "prefix_tokens": o["prefix_tokens"],
                     "n_conditions": o["n_conditions"], "forwards": len(b) * (1 if mode == "grouped" else o["n_conditions"]),
                     "users_per_s": o["users"] / sec, "ms_per_user": 1e3 * sec / o["users"],
                     "useful_tflops": flops / sec / 1e12, "seconds": sec})
    speedup = rows[0]["users_per_s"] / rows[1]["users_per_s"]
    max_diff = float((outs["grouped"] - outs["naive"]).abs().max())
    summary = {"device": device, "prefix_tokens": o["prefix_tokens"], "n_conditions": o["n_conditions"],
               "grouped_users_per_s": round(rows[0]["users_per_s"], 1),
               "naive_users_per_s": round(rows[1]["users_per_s"], 1), "speedup": round(speedup, 2),
               "time_saved_pct": round(100 * (1 - 1 / speedup), 1), "max_abs_diff": max_diff}
    return {"table": rows, "summary": summary, "options": o, "quick": quick,
            "torch": torch.__version__, "threads": torch.get_num_threads(), "platform": platform.platform(),
            "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None}
