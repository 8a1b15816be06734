"""The LUM on a GPU with synthetic data at MovieLens-1M's shape: bf16 training steps and grouped inference.

Used by `make gpu-check` (stages.bench.gpu_check); nothing here reads the warehouse. The model is the
default `ModelConfig` sized for ML-1M's items and genres; the data are random, so the checks prove the
GPU paths run, agree with each other and learn (loss falls on a repeated batch), not model quality.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import torch

from stages.model.losses import info_nce_loss
from stages.model.lum import LUM, ModelConfig

log = logging.getLogger(__name__)
ML1M_ITEMS, ML1M_GENRES = 3883, 18  # MovieLens-1M's item and genre counts: the shape, not the data
AGREE = 0.1  # max |diff| of unit-norm bf16 outputs between attention paths; a wrong mask gives O(1)


def synthetic_model(cfg: ModelConfig, device: torch.device, seed: int = 0) -> LUM:
    """A fresh LUM over ML-1M-sized tables; one condition feature (the genre) plus the unknown id 0."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    n_conditions = ML1M_GENRES + 1
    model = LUM(cfg, n_item_rows=ML1M_ITEMS + 1, item_category=torch.randint(0, ML1M_GENRES, (ML1M_ITEMS + 1,),
                                                                              generator=gen),
                cond_features=torch.arange(n_conditions)[:, None], feature_sizes=[n_conditions],
                n_categories=ML1M_GENRES)
    return model.to(device)


def _histories(lengths: list[int], device: torch.device, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """(items, conds, cu) for behaviours of ``lengths``: random item rows, conditions = the item's genre."""
    total = sum(lengths)
    items = torch.randint(1, ML1M_ITEMS + 1, (total,), generator=gen)
    conds = torch.randint(1, ML1M_GENRES + 1, (total,), generator=gen)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    return items.to(device), conds.to(device), cu.to(device)


def training_check(device: torch.device, *, backend: str = "varlen", steps: int = 8, sequences: int = 48,
                   seed: int = 0) -> dict[str, Any]:
    """``steps`` AdamW steps (bf16 autocast on CUDA, as the training loop runs there) on one repeated packed
    batch with ``backend`` attention; also the forward's agreement with the dense-mask path on that batch."""
    cfg = ModelConfig()
    model = synthetic_model(cfg, device, seed)
    model.attention_backend = backend
    gen = torch.Generator().manual_seed(seed + 1)
    lengths = torch.randint(cfg.max_len // 2, cfg.max_len + 1, (sequences,), generator=gen).tolist()
    items, conds, cu = _histories(lengths, device, gen)
    negatives = torch.randint(1, ML1M_ITEMS + 1, (1024,), generator=gen).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            out = model.encode_packed(items, conds, cu)
        loss, _ = info_nce_loss(out.float(), items, model.item_embeddings, scale=model.logit_scale,
                                sampled=negatives, accuracy=False)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
        fast = model.encode_packed(items, conds, cu).float()
        model.attention_backend = "sdpa_mask"
        dense = model.encode_packed(items, conds, cu).float()
    finite = all(torch.isfinite(torch.tensor(losses)).tolist())
    diff = float((fast - dense).abs().max())
    passed = finite and losses[-1] < losses[0] and diff < AGREE
    return {"backend": backend, "dtype": "bfloat16 autocast" if cuda else "float32", "sequences": sequences, "tokens": 2 * sum(lengths),
            "steps": steps, "losses": [round(x, 4) for x in losses], "finite": finite,
            "decreased": finite and losses[-1] < losses[0],
            "max_abs_diff_vs_sdpa_mask": diff, "seconds_all_steps": round(seconds, 3), "passed": passed}


def inference_check(device: torch.device, *, users: int = 2048, history: int = 256, conditions: int = 16,
                    backends: tuple[str, ...] = ("triton", "torch"),
                    dtypes: tuple[str, ...] = ("float32", "bfloat16"), seed: int = 0) -> dict[str, Any]:
    """Users/s of `LUM.encode_grouped` with ``history`` behaviours (2 x history tokens) and ``conditions``
    queries per user, per backend and weight dtype (float32 is what the infer stage runs). Timed with
    triton.testing.do_bench (median); outputs of the backends compared per dtype."""
    from triton.testing import do_bench  # deferred: triton only on the CUDA path

    cfg = ModelConfig(max_len=history + 1)  # queries read history_len = max_len - 1 behaviours
    gen = torch.Generator().manual_seed(seed + 2)
    items, conds, cu_h = _histories([history] * users, device, gen)
    queries = torch.randint(1, ML1M_GENRES + 1, (users * conditions,), generator=gen).to(device)
    cu_q = torch.arange(0, users * conditions + 1, conditions, dtype=torch.int32, device=device)
    rows = []
    for dtype in dtypes:
        model = synthetic_model(cfg, device, seed).to(getattr(torch, dtype)).eval()
        outs, by_backend = {}, {}
        for backend in backends:
            call = functools.partial(model.encode_grouped, items, conds, cu_h, queries, cu_q, backend=backend)
            with torch.inference_mode():
                outs[backend] = call().float()
                ms = float(do_bench(call, return_mode="median"))
            by_backend[backend] = {"dtype": dtype, "backend": backend, "users": users, "history_tokens": 2 * history,
                                   "conditions": conditions, "ms": round(ms, 3),
                                   "users_per_s": round(users / (ms * 1e-3)),
                                   "embeddings_per_s": round(users * conditions / (ms * 1e-3))}
            log.info("gpu-check inference %s %s: %.2f ms", dtype, backend, ms)
        for backend in backends[1:]:
            diff = (outs[backend] - outs[backends[0]]).abs().max()
            by_backend[backend][f"max_abs_diff_vs_{backends[0]}"] = float(diff)
        rows += by_backend.values()
    return {"rows": rows, "note": "synthetic users and model at ML-1M's item/genre counts; every user has "
                                  f"{2 * history} history tokens and {conditions} condition queries"}
