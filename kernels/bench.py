"""Grouped-query attention benchmark: the Triton kernel against the alternatives, at realistic sizes.

``run(Config(...)) -> dict`` returns a JSON-able report (``lum bench kernels`` builds the Config from its
--set options and writes the report). Methods are those of kernels.bench_methods, all on the same jagged
batch; each is checked against the torch path (max |diff| reported).
Timing: on CUDA ``triton.testing.do_bench`` (CUDA events, L2 flushed between runs, median); on CPU
``torch.utils.benchmark.Timer.blocked_autorange`` (median over blocks, at the configured thread count).
Useful TFLOP/s counts only visible (query, key) pairs: 4 * H * D * sum_b [P_b (P_b + 1) / 2 + N_b (P_b + 1)].
``pct_of_matmul`` compares with a dense matmul of the same dtype measured in the same run, on the same
device; ``x_time_of_<primary>`` is each method's time over the primary path's (Triton on CUDA, torch on CPU).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from kernels.bench_methods import BUILDERS, make_batch, useful_flops

log = logging.getLogger(__name__)
METHODS = ("triton", "triton_per_call", "torch_grouped", "sdpa_dense", "flex_compiled", "naive")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass(frozen=True)
class Config:
    users: int | None = None  # sequences per batch; None: 256 on CUDA (a serving batch), 64 on CPU
    prefix: int | None = None  # max history tokens per user; None: 512 on CUDA, 256 on CPU
    conditions: int | None = None  # condition tokens N per user; None: 16 on CUDA, 8 on CPU
    heads: int | None = None  # query heads; None: 8 on CUDA, 4 on CPU
    kv_heads: int | None = None  # k/v heads (GQA when < heads); None: = heads
    head_dim: int = 64  # LUM-sized heads
    dtype: str | None = None  # None: bfloat16 on CUDA (training/inference dtype), float32 on CPU
    jitter: float = 0.5  # prefixes uniform in [prefix*(1-jitter), prefix]: jagged like real histories
    repeats: int = 5  # CPU: time each method for at least repeats x its first call (CUDA: do_bench's budget)
    sweep: bool = True  # also sweep prefix length and N around the headline size
    flex: bool | None = None  # run compiled FlexAttention; None: on CUDA yes, on CPU no (a CPU compile is slow)
    methods: tuple[str, ...] = METHODS  # subset to run
    device: str | None = None  # None: cuda when available, else cpu
    seed: int = 0  # batch contents and jitter
    cpu_threads: int = 0  # torch intra-op threads; 0 = torch's default. 1 gives stable numbers on a loaded
    # shared machine (threads waiting on busy cores dominate small gathers)


# `lum bench kernels --quick`: options applied under the user's --set values
QUICK = {"users": 16, "prefix": 64, "conditions": 4, "heads": 2, "head_dim": 32, "repeats": 2, "sweep": False}


def resolve(cfg: Config) -> Config:
    """Fill the device-dependent defaults (None fields); check the options."""
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
    if resolved.repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {resolved.repeats}")
    return resolved


def time_ms(fn: Callable[[], Any], device: str, *, budget_s: float) -> float:
    """Median milliseconds of ``fn()`` (already called once: compiled and warm). CUDA: do_bench with its
    own warm-up and repeat budget; CPU: Timer.blocked_autorange for at least ``budget_s`` seconds."""
    if device == "cuda":
        from triton.testing import do_bench  # deferred: triton is needed only to time CUDA runs

        return float(do_bench(fn, return_mode="median"))
    from torch.utils.benchmark import Timer  # deferred: loads only for CPU timing

    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=budget_s).median * 1e3


def matmul_tflops(device: str, dtype: torch.dtype) -> float:
    """Dense matmul rate (TFLOP/s) on random data: the yardstick for useful attention FLOP/s."""
    n = 8192 if device == "cuda" else 1024
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    started = time.perf_counter()
    a @ b
    ms = time_ms(lambda: a @ b, device, budget_s=5 * (time.perf_counter() - started))
    return 2 * n ** 3 / (ms * 1e-3) / 1e12


def _skip_reason(cfg: Config, name: str, *, sweep_point: bool) -> str | None:
    if name.startswith("triton") and cfg.device != "cuda":
        return "skipped: no CUDA device (Triton interpreter is a test tool, not timed)"
    if name == "flex_compiled" and not cfg.flex:
        return "skipped: flex=false (a CPU compile of FlexAttention is slow; --set flex=true)"
    if name == "flex_compiled" and cfg.device != "cuda" and sweep_point:
        return "skipped on CPU sweep points (one compile per shape)"
    return None


def bench_one(cfg: Config, *, prefix: int, conditions: int, matmul: float) -> list[dict[str, Any]]:
    """Time every method of a resolved ``cfg`` on one batch: rows with ms, useful TFLOP/s, ratios and
    max |diff| against the torch path."""
    batch = make_batch(cfg.users, prefix, conditions, cfg.heads, cfg.kv_heads, cfg.head_dim, DTYPES[cfg.dtype],
                       cfg.device, cfg.jitter, cfg.seed)
    flops = useful_flops(batch)
    label = f"B={cfg.users} P<={prefix} N={conditions}"
    rows: list[dict[str, Any]] = []
    reference = None
    for name in ("torch_grouped", *[m for m in cfg.methods if m != "torch_grouped"]):
        row: dict[str, Any] = {"config": label, "method": name}
        skip = _skip_reason(cfg, name, sweep_point=(prefix, conditions) != (cfg.prefix, cfg.conditions))
        if skip:
            rows.append({**row, "ms": None, "tflops": None, "note": skip})
            continue
        try:
            started = time.perf_counter()
            with torch.no_grad():
                run = BUILDERS[name](batch)
                out = run()
                if cfg.device == "cuda":
                    torch.cuda.synchronize()
                first_s = time.perf_counter() - started
                ms = time_ms(run, cfg.device, budget_s=cfg.repeats * first_s)
        except (RuntimeError, torch.OutOfMemoryError) as exc:  # OOM or an unsupported backend: report it
            reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            rows.append({**row, "ms": None, "tflops": None, "note": f"failed: {reason}"})
            continue
        if reference is None:
            reference = out.float()
        diff = (out.float() - reference).abs().max().item()
        tflops = flops / (ms * 1e-3) / 1e12
        rows.append({**row, "ms": round(ms, 4), "tflops": round(tflops, 4),
                     "pct_of_matmul": round(100 * tflops / matmul, 1), "max_abs_diff": float(f"{diff:.3g}"),
                     "note": f"setup+first call {first_s:.1f}s"})
        log.info("bench kernels %s %s: %.3f ms %.3f TFLOP/s", label, name, ms, tflops)
    primary = "triton" if cfg.device == "cuda" else "torch_grouped"
    base = next((r["ms"] for r in rows if r["method"] == primary and r["ms"]), None)
    for r in rows:
        r["x_time_of_" + primary] = float(f"{r['ms'] / base:.3g}") if (base and r["ms"]) else None
    return rows


def run(cfg: Config) -> dict[str, Any]:
    """Benchmark the headline size (and a sweep around it); returns the JSON-able report."""
    cfg = resolve(cfg)
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
        rows += bench_one(cfg, prefix=prefix, conditions=conditions, matmul=matmul)
    head = [r for r in rows if r["config"] == rows[0]["config"] and r["ms"]]
    by_name = {r["method"]: r["ms"] for r in head}
    primary = "triton" if cfg.device == "cuda" else "torch_grouped"
    speedups = {f"{primary}_speedup_vs_{m}": float(f"{ms / by_name[primary]:.3g}")
                for m, ms in by_name.items() if m != primary and primary in by_name}
    head_primary = next((r for r in head if r["method"] == primary), {})
    device_name = torch.cuda.get_device_name() if cfg.device == "cuda" else "cpu"
    cpu_note = "CPU run: the Triton kernel is not timed (needs a CUDA GPU); only torch/SDPA/flex/naive ran"
    return {
        "table": rows,
        "summary": {"device": device_name, "dtype": cfg.dtype, "headline": rows[0]["config"], "primary": primary,
                    **speedups, "primary_tflops": head_primary.get("tflops"),
                    "primary_pct_of_matmul": head_primary.get("pct_of_matmul"), "matmul_tflops": round(matmul, 3)},
        "config": dataclasses.asdict(cfg), "notes": [] if cfg.device == "cuda" else [cpu_note],
        "date": dt.datetime.now(dt.UTC).isoformat(), "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
