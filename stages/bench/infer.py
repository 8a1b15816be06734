"""``lum bench infer``: users/s of grouped-query vs naive inference, same model and users, one run.

Each user has ``prefix_tokens`` history tokens (``prefix_tokens / 2`` behaviours) and ``n_conditions`` query
conditions; both modes go through the stage's own path (``pack_by_budget`` -> ``build_batch`` ->
``stages.infer.encode.encode``) on a randomly initialised LUM of the pretrain default size (weights do not
change the cost). Grouped costs P + N tokens per user, naive N (P + 1).
Reported per mode: users/s (median of ``repeats`` timed passes after a warm-up), ms per user, max |grouped -
naive|, and useful TFLOP/s: the grouped computation's matmul FLOPs (2 D (4 D + 2 d_ff) per token per layer,
plus 4 Dh H (P (P + 1) / 2 + N P + N) per user per layer for QK^T and AV) charged to both modes, so their
TFLOP/s ratio is their speed ratio. CPU timings on a shared machine vary; quick mode is a smoke test.
"""

from __future__ import annotations

import dataclasses
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from stages.core.device import resolve_device
from stages.infer.chunks import JaggedBatch, build_batch, pack_by_budget
from stages.infer.encode import MODES, encode, forward_budget, tokens_per_user
from stages.model.lum import ModelConfig, build_model
from stages.model.vocab import Vocab
from stages.warehouse.facade import Warehouse


@dataclass(frozen=True)
class Config:
    users: int = 256  # users per timed pass (same users for both modes)
    prefix_tokens: int = 256  # history tokens per user (= 128 behaviours)
    n_conditions: int = 16  # query conditions per user (N)
    token_budget: int = 16384  # tokens per forward, as in stages.infer.stage.Config
    d_model: int = 64  # the pretrain ModelConfig default
    n_heads: int = 2  # the pretrain ModelConfig default
    n_layers: int = 2  # the pretrain ModelConfig default
    d_ff: int = 256  # the pretrain ModelConfig default
    n_items: int = 3_000  # vocabulary size (ML-1M-like)
    n_categories: int = 18  # condition vocabulary size (ML-1M genres)
    repeats: int = 3  # timed passes per mode (median reported)
    seed: int = 0  # model weights and synthetic users
    device: str = "auto"  # "auto" = cuda when available, else cpu
    threads: int = 0  # torch CPU threads (0 = torch's default); 1 gives steadier numbers on a shared machine


QUICK: dict[str, Any] = {"users": 8, "prefix_tokens": 32, "n_conditions": 4, "repeats": 1, "n_items": 50}  # --quick


def useful_flops(o: Mapping[str, Any]) -> float:
    """Matmul FLOPs of the grouped computation for ``users`` users (see module docstring)."""
    d, ff, layers = o["d_model"], o["d_ff"], o["n_layers"]
    p, n = o["prefix_tokens"], o["n_conditions"]
    per_token = 2 * d * (4 * d + 2 * ff)
    attn = 4 * d * (p * (p + 1) / 2 + n * p + n)  # H * Dh = d
    return float(o["users"]) * layers * ((p + n) * per_token + attn)


def _setup(cfg: Config, device: torch.device) -> tuple[Any, Callable[[str], list[JaggedBatch]]]:
    """The model and, per mode, the packed batches of the same synthetic users."""
    if cfg.prefix_tokens % 2 or cfg.prefix_tokens < 2:
        raise ValueError(f"prefix_tokens must be an even number >= 2, got {cfg.prefix_tokens}")
    cats = [f"c{k:02d}" for k in range(cfg.n_categories)]
    vocab = Vocab.build(range(cfg.n_items), [cats[i % len(cats)] for i in range(cfg.n_items)])
    if cfg.n_conditions > vocab.n_conditions - 1:
        raise ValueError(f"n_conditions {cfg.n_conditions} > {vocab.n_conditions - 1} categories in the vocabulary")
    torch.manual_seed(cfg.seed)
    behaviours = cfg.prefix_tokens // 2
    mcfg = ModelConfig(d_model=cfg.d_model, n_heads=cfg.n_heads, n_layers=cfg.n_layers, d_ff=cfg.d_ff,
                       max_len=behaviours, dropout=0.0)
    model = build_model(mcfg, vocab).to(device).eval()
    rng = np.random.default_rng(cfg.seed)
    items = [rng.integers(1, vocab.n_item_rows, size=behaviours) for _ in range(cfg.users)]
    conds = [rng.integers(1, vocab.n_conditions, size=behaviours) for _ in range(cfg.users)]
    queries = [rng.choice(np.arange(1, vocab.n_conditions), size=cfg.n_conditions, replace=False)
               for _ in range(cfg.users)]

    def batches(mode: str) -> list[JaggedBatch]:
        per_user = tokens_per_user(mode, [behaviours] * cfg.users, [cfg.n_conditions] * cfg.users)
        budget = forward_budget(mode, cfg.token_budget, cfg.n_conditions)
        return [build_batch(s, items, conds, queries, device=device) for s in pack_by_budget(per_user, budget)]

    return model, batches


def _time_mode(model: Any, batches: list[JaggedBatch], mode: str, repeats: int,
               device: torch.device) -> tuple[list[float], torch.Tensor]:
    def one_pass() -> list[torch.Tensor]:
        outs = [encode(model, b, mode) for b in batches]
        if device.type == "cuda":
            torch.cuda.synchronize()
        return outs

    one_pass()  # warm-up: allocator, kernel compilation / autotune
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        outs = one_pass()
        times.append(time.perf_counter() - start)
    return times, torch.cat(outs).float().cpu()


def run(cfg: Config, *, warehouse: Warehouse | str | None = None) -> dict[str, Any]:
    """Grouped vs naive users/s; ``warehouse`` is unused (the bench needs no tables)."""
    o = dataclasses.asdict(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    model, batches = _setup(cfg, device)
    flops = useful_flops(o)
    rows, outs = [], {}
    for mode in MODES:  # grouped first: rows[0] / rows[1] is the speedup
        b = batches(mode)
        times, outs[mode] = _time_mode(model, b, mode, cfg.repeats, device)
        sec = statistics.median(times)
        rows.append({"mode": mode, "device": str(device), "users": cfg.users, "prefix_tokens": cfg.prefix_tokens,
                     "n_conditions": cfg.n_conditions,
                     "forwards": len(b) * (1 if mode == "grouped" else cfg.n_conditions),
                     "users_per_s": cfg.users / sec, "ms_per_user": 1e3 * sec / cfg.users,
                     "useful_tflops": flops / sec / 1e12, "seconds": sec})
    speedup = rows[0]["users_per_s"] / rows[1]["users_per_s"]
    max_diff = float((outs["grouped"] - outs["naive"]).abs().max())
    summary = {"device": str(device), "prefix_tokens": cfg.prefix_tokens, "n_conditions": cfg.n_conditions,
               "grouped_users_per_s": round(rows[0]["users_per_s"], 1),
               "naive_users_per_s": round(rows[1]["users_per_s"], 1), "speedup": round(speedup, 2),
               "time_saved_pct": round(100 * (1 - 1 / speedup), 1), "max_abs_diff": max_diff}
    return {"table": rows, "summary": summary, "options": o,
            "torch": torch.__version__, "threads": torch.get_num_threads(), "platform": platform.platform(),
            "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None}
