"""``lum bench kernels``: grouped-query attention, Triton vs the alternatives, at realistic sizes.

Methods (same jagged batch, same output; each checked against the torch path, max |diff| reported):
  triton          kernels.triton_grouped (CUDA only; the interpreter is a test tool, not timed)
  torch_grouped   kernels.torch_grouped: prefix once + conditions vs prefix, bucketed SDPA
  sdpa_dense      SDPA with a dense boolean (B, 1, L, L) mask on right-padded (B, H, L, D) tensors
  flex_compiled   torch.compile(flex_attention) with a block mask over the packed batch (CPU: only the
                  headline size and only when ``flex=true``: one CPU compile takes ~80 s on 2 cores)
  naive           one causal pass per condition: B*N sequences of [prefix, condition] (LUM without the
                  grouped query), SDPA is_causal on right-padded tensors
Timing: median of ``repeats`` after one warm-up (synchronised on CUDA). Every method is timed end to end
from packed (T, H, D) inputs to the packed output, as one model layer would call it (pads, gathers and
scatters included); per-batch metadata shared by all layers (index tensors, dense mask, flex block mask,
Triton tile table excepted: it is built per call) is built before timing. Useful TFLOP/s counts only visible
(query, key) pairs: 4 * H * D * sum_b [P_b (P_b + 1) / 2 + N_b (P_b + 1)]. ``pct_of_matmul`` compares
with a measured dense matmul of the same dtype on the same device.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from stages.core.config import from_mapping, to_dict

log = logging.getLogger(__name__)
METHODS = ("triton", "torch_grouped", "sdpa_dense", "flex_compiled", "naive")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass(frozen=True)
class Config:
    users: int | None = None  # sequences per batch; None: 256 on CUDA (issue 4's size), 64 on CPU
    prefix: int | None = None  # max history tokens per user; None: 512 on CUDA, 256 on CPU
    conditions: int | None = None  # condition tokens N per user; None: 16 on CUDA, 8 on CPU
    heads: int | None = None  # query heads; None: 8 on CUDA, 4 on CPU
    kv_heads: int | None = None  # k/v heads (GQA when < heads); None: = heads
    head_dim: int = 64  # LUM-sized heads
    dtype: str | None = None  # None: bfloat16 on CUDA (training/inference dtype), float32 on CPU
    jitter: float = 0.5  # prefixes uniform in [prefix*(1-jitter), prefix]: jagged like real histories
    repeats: int = 5  # timed runs per method (median reported)
    sweep: bool = True  # also sweep prefix length and N around the headline size
    flex: bool | None = None  # run compiled FlexAttention; None: on CUDA yes, on CPU no (compile ~80 s)
    methods: tuple[str, ...] = METHODS  # subset to run
    device: str | None = None  # None: cuda when available, else cpu
    seed: int = 0  # batch contents and jitter
    cpu_threads: int = 0  # torch intra-op threads; 0 = torch's default. 1 gives stable numbers on a loaded
    # shared machine (2 threads on 2 busy cores spent 13 ms per tiny gather in OMP barriers, measured)


QUICK = {"users": 16, "prefix": 64, "conditions": 4, "heads": 2, "head_dim": 32, "repeats": 2, "sweep": False}


def _resolve(cfg: Config) -> Config:
    cuda = (cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"

    def pick(gpu: Any, cpu: Any) -> Any:
        return gpu if cuda else cpu
    bad = sorted(set(cfg.methods) - set(METHODS))
    if bad:
        raise ValueError(f"methods: unknown {bad}; known {list(METHODS)}")
    resolved = dataclasses.replace(
        cfg, device="cuda" if cuda else "cpu", users=cfg.users or pick(256, 64),
        prefix=cfg.prefix or pick(512, 256),
        conditions=cfg.conditions if cfg.conditions is not None else pick(16, 8),
        heads=cfg.heads or pick(8, 4), dtype=cfg.dtype or pick("bfloat16", "float32"),
        flex=cfg.flex if cfg.flex is not None else cuda)
    resolved = dataclasses.replace(resolved, kv_heads=cfg.kv_heads or resolved.heads)
    if resolved.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {resolved.dtype!r}")
    if not 0 <= resolved.jitter < 1:
        raise ValueError(f"jitter must be in [0, 1), got {resolved.jitter}")
    return resolved


def make_batch(users: int, prefix: int, conditions: int, heads: int, kv_heads: int, head_dim: int,
               dtype: torch.dtype, device: str, jitter: float, seed: int) -> dict[str, Any]:
    """A packed jagged batch: prefixes uniform in [prefix*(1-jitter), prefix], N conditions each."""
    gen = torch.Generator().manual_seed(seed)
    low = max(0, int(prefix * (1 - jitter)))
    prefixes = torch.randint(low, prefix + 1, (users,), generator=gen)
    lengths = prefixes + conditions
    cu = torch.zeros(users + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lengths, 0)
    t = int(cu[-1])

    def rand(h: int) -> torch.Tensor:
        return torch.randn(t, h, head_dim, generator=gen).to(device=device, dtype=dtype)

    return {"q": rand(heads), "k": rand(kv_heads), "v": rand(kv_heads), "cu": cu.to(device),
                "prefix_lens": prefixes.to(torch.int32).to(device), "offsets": cu.tolist(),
                "prefixes": prefixes.tolist(),
                "conditions": conditions, "scale": head_dim ** -0.5}


def useful_flops(batch: dict[str, Any]) -> float:
    """4 * H * D * visible (query, key) pairs (QK^T and PV, 2 FLOPs per multiply-add)."""
    _, h, d = batch["q"].shape
    n = batch["conditions"]
    pairs = sum(p * (p + 1) // 2 + n * (p + 1) for p in batch["prefixes"])
    return 4.0 * h * d * pairs


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], Any], device: str, repeats: int) -> float:
    """Median wall time of ``fn`` in ms after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _zero_row(x: torch.Tensor) -> torch.Tensor:
    """(T, H, D) -> (T+1, H, D) with a zero last row: gathers read padding from index T."""
    return torch.cat([x, x.new_zeros((1, *x.shape[1:]))])


def _method_torch(batch, backend: str):
    from kernels import grouped_query_attention

    def run():
        return grouped_query_attention(batch["q"], batch["k"], batch["v"], batch["cu"], batch["prefix_lens"],
                                       scale=batch["scale"], backend=backend)
    return run


def _method_dense(batch):
    """Pad to (B, H, L_max, D), SDPA with a dense (B, 1, L, L) boolean mask, unpad. Index and mask
    tensors are built once (shared by every layer); pad/unpad are timed."""
    offsets, device = batch["offsets"], batch["q"].device
    t = offsets[-1]
    lengths = torch.tensor([offsets[b + 1] - offsets[b] for b in range(len(offsets) - 1)])
    ar = torch.arange(int(lengths.max()))
    valid = ar[None, :] < lengths[:, None]
    idx = torch.where(valid, torch.tensor(offsets[:-1])[:, None] + ar[None, :], t).to(device)
    valid = valid.to(device)
    pos = ar.to(device)
    pre = batch["prefix_lens"].long()[:, None, None]
    rows, cols = pos[None, :, None], pos[None, None, :]
    mask = torch.where(rows < pre, cols <= rows, (cols < pre) | (cols == rows))[:, None]  # (B, 1, L, L)
    gqa = batch["q"].shape[1] != batch["k"].shape[1]

    def run():
        qp, kp, vp = (_zero_row(batch[n])[idx].transpose(1, 2) for n in "qkv")
        out = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask, scale=batch["scale"], enable_gqa=gqa)
        return out.transpose(1, 2)[valid]
    return run


def _method_naive(batch):
    """B*N sequences [prefix_b, condition_j] (right-padded, is_causal); history outputs come from each
    user's first pass, condition outputs from the last row of each pass. Gathers/scatters are timed."""
    offsets, prefixes, n = batch["offsets"], batch["prefixes"], batch["conditions"]
    device, t = batch["q"].device, offsets[-1]
    users = len(prefixes)
    starts = torch.tensor(offsets[:-1]).repeat_interleave(n)
    pre = torch.tensor(prefixes).repeat_interleave(n)
    cond = torch.arange(n).repeat(users)
    ar = torch.arange(max(prefixes) + 1)
    idx = torch.where(ar[None, :] < pre[:, None], starts[:, None] + ar[None, :],
                      starts[:, None] + pre[:, None] + cond[:, None])
    idx = torch.where(ar[None, :] <= pre[:, None], idx, t).to(device)
    first = cond == 0
    hist_valid = (ar[None, :] < pre[:, None])[first].to(device)  # (B, P_max + 1)
    hist_pos = idx[first.to(device)][hist_valid]
    cond_pos = (starts + pre + cond).to(device)
    last = pre.to(device)
    gqa = batch["q"].shape[1] != batch["k"].shape[1]

    def run():
        qp, kp, vp = (_zero_row(batch[n])[idx].transpose(1, 2) for n in "qkv")
        out = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, scale=batch["scale"], enable_gqa=gqa)
        out = out.transpose(1, 2)  # (B*N, P_max + 1, H, D)
        packed = out.new_empty((t, *out.shape[2:]))
        packed.index_copy_(0, hist_pos, out[first.to(device)][hist_valid])
        packed.index_copy_(0, cond_pos, out[torch.arange(out.shape[0], device=device), last])
        return packed
    return run


def _method_flex(batch):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    offsets, prefixes = batch["offsets"], batch["prefixes"]
    device = batch["q"].device
    lengths = torch.tensor([offsets[b + 1] - offsets[b] for b in range(len(prefixes))])
    t = int(lengths.sum())
    doc = torch.repeat_interleave(torch.arange(len(prefixes)), lengths).to(device)
    pos = (torch.arange(t) - torch.repeat_interleave(torch.tensor(offsets[:-1]), lengths)).to(device)
    pre_tok = torch.repeat_interleave(torch.tensor(prefixes), lengths).to(device)

    def mask_mod(b, h, q_idx, kv_idx):
        qp, kp, pp = pos[q_idx], pos[kv_idx], pre_tok[q_idx]
        return (doc[q_idx] == doc[kv_idx]) & torch.where(qp < pp, kp <= qp, (kp < pp) | (kp == qp))

    block_mask = create_block_mask(mask_mod, 1, 1, t, t, device=str(device))
    flex = torch.compile(flex_attention, dynamic=False)
    gqa = batch["q"].shape[1] != batch["k"].shape[1]

    def run():
        q4, k4, v4 = (batch[n].transpose(0, 1)[None] for n in "qkv")
        out = flex(q4, k4, v4, block_mask=block_mask, scale=batch["scale"], enable_gqa=gqa)
        return out[0].transpose(0, 1)
    return run


def matmul_tflops(device: str, dtype: torch.dtype) -> float:
    """Measured dense matmul rate (TFLOP/s): the yardstick for useful attention FLOP/s."""
    n = 8192 if device == "cuda" else 1024
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    ms = time_ms(lambda: a @ b, device, 5)
    return 2 * n ** 3 / (ms * 1e-3) / 1e12


def bench_one(cfg: Config, *, prefix: int, conditions: int, methods: tuple[str, ...],
              matmul: float) -> list[dict[str, Any]]:
    """Time every method on one batch; rows with ms, useful TFLOP/s, ratios and max |diff| vs torch."""
    batch = make_batch(cfg.users, prefix, conditions, cfg.heads, cfg.kv_heads, cfg.head_dim,
                       DTYPES[cfg.dtype],
                       cfg.device, cfg.jitter, cfg.seed)
    flops = useful_flops(batch)
    builders = {"triton": lambda: _method_torch(batch, "triton"),
                "torch_grouped": lambda: _method_torch(batch, "torch"),
                "sdpa_dense": lambda: _method_dense(batch), "flex_compiled": lambda: _method_flex(batch),
                "naive": lambda: _method_naive(batch)}
    label = f"B={cfg.users} P<={prefix} N={conditions}"
    rows: list[dict[str, Any]] = []
    reference = None
    for name in ("torch_grouped", *[m for m in methods if m != "torch_grouped"]):
        row: dict[str, Any] = {"config": label, "method": name}
        if name not in methods and name != "torch_grouped":
            continue
        skip = _skip_reason(cfg, name, sweep_point=(prefix, conditions) != (cfg.prefix, cfg.conditions))
        if skip:
            rows.append({**row, "ms": None, "tflops": None, "note": skip})
            continue
        try:
            started = time.perf_counter()
            run = builders[name]()
            with torch.no_grad():
                out = run()
                ms = time_ms(run, cfg.device, cfg.repeats)
        except (RuntimeError, torch.OutOfMemoryError) as exc:  # OOM or an unsupported backend: report it
            reason = str(exc).splitlines()[0][:120]
            rows.append({**row, "ms": None, "tflops": None, "note": f"failed: {reason}"})
            continue
        if reference is None:
            reference = out.float()
        diff = (out.float() - reference).abs().max().item()
        setup_s = time.perf_counter() - started - ms * cfg.repeats / 1e3
        tflops = flops / (ms * 1e-3) / 1e12
        rows.append({**row, "ms": round(ms, 3), "tflops": round(tflops, 4),
                     "pct_of_matmul": round(100 * tflops / matmul, 1), "max_abs_diff": float(f"{diff:.3g}"),
                     "note": f"setup+first call {setup_s:.1f}s"})
        log.info("bench kernels %s %s: %.3f ms %.3f TFLOP/s", label, name, ms, tflops)
    primary = "triton" if cfg.device == "cuda" else "torch_grouped"
    base = next((r["ms"] for r in rows if r["method"] == primary and r["ms"]), None)
    for r in rows:
        r["x_time_of_" + primary] = float(f"{r['ms'] / base:.3g}") if (base and r["ms"]) else None
    return rows


def _skip_reason(cfg: Config, name: str, *, sweep_point: bool) -> str | None:
    if name == "triton" and cfg.device != "cuda":
        return "skipped: no CUDA device (Triton interpreter is a test tool, not timed)"
    if name == "flex_compiled" and not cfg.flex:
        return "skipped: flex=false (CPU compile of FlexAttention takes ~80 s; --set flex=true)"
    if name == "flex_compiled" and cfg.device != "cuda" and sweep_point:
        return "skipped on CPU sweep points (one ~80 s compile per shape)"
    return None


def run_bench(opts: dict[str, Any], *, quick: bool, warehouse: str) -> dict[str, Any]:
    """Benchmark the headline size (and a sweep); ``warehouse`` is unused (synthetic tensors)."""
    del warehouse
    cfg = _resolve(from_mapping(Config, {**(QUICK if quick else {}), **opts}))
    torch.manual_seed(cfg.seed)
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    matmul = matmul_tflops(cfg.device, DTYPES[cfg.dtype])
    points = [(cfg.prefix, cfg.conditions)]
    if cfg.sweep:
        points += [(p, cfg.conditions) for p in (cfg.prefix // 4, cfg.prefix // 2, cfg.prefix * 2)]
        points += [(cfg.prefix, n) for n in (1, max(1, cfg.conditions // 4), cfg.conditions * 4)]
    rows: list[dict[str, Any]] = []
    for prefix, conditions in points:
        rows += bench_one(cfg, prefix=prefix, conditions=conditions, methods=cfg.methods, matmul=matmul)
    head = [r for r in rows if r["config"] == rows[0]["config"] and r["ms"]]
    by_name = {r["method"]: r["ms"] for r in head}
    primary = "triton" if cfg.device == "cuda" else "torch_grouped"
    speedups = {f"{primary}_speedup_vs_{m}": float(f"{ms / by_name[primary]:.3g}")
                for m, ms in by_name.items() if m != primary and primary in by_name}
    device_name = torch.cuda.get_device_name() if cfg.device == "cuda" else "cpu"
    cpu_note = "CPU run: the Triton kernel is not timed (needs a CUDA GPU); only torch/SDPA/flex/naive ran"
    notes = [] if cfg.device == "cuda" else [cpu_note]
    return {
        "table": rows,
        "summary": {"device": device_name, "dtype": cfg.dtype, "headline": rows[0]["config"],
                    "primary": primary, **speedups, "matmul_tflops": round(matmul, 3)},
        "config": to_dict(cfg), "notes": notes, "date": dt.datetime.now(dt.UTC).isoformat(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
