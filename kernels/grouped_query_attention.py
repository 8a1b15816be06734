"""Public entry point: validate every argument, then dispatch to the Triton or the torch backend.

``grouped_query_attention(q, k, v, cu_seqlens, prefix_lens, *, scale=None, backend="auto")``
  q: (T, H, D), k, v: (T, H_kv, D), H % H_kv == 0, same float dtype (fp32/fp16/bf16, fp64 for torch),
  contiguous, same device; cu_seqlens: int32 (B+1,), 0 = cu[0] <= cu[1] <= ... <= cu[B] = T;
  prefix_lens: int32 (B,), 0 <= prefix_lens[b] <= length b. Returns (T, H, D) in q.dtype.
  Token i of sequence b attends causally (keys <= i) when i < prefix_lens[b], else to keys
  < prefix_lens[b] and itself (CONTRACT.md).

Backend choice: an explicit ``backend="triton"|"torch"`` wins; ``"auto"`` reads ``LUM_ATTENTION_BACKEND``
(triton|torch|auto) and otherwise picks triton for CUDA tensors and torch elsewhere (also under
TRITON_INTERPRET=1: the interpreter is a test tool, ask for ``backend="triton"`` explicitly to use it).
Each (requested, chosen, device) decision is logged once. Triton's backward covers only plain packed
causal attention (prefix_lens == lengths); with ``auto`` and gradients needed on a grouped batch, the
torch path is used (logged).

Validation copies cu_seqlens/prefix_lens to the host once (B+1 + B ints; one device sync) - the Triton
launcher needs max_seqlen on the host for its grid anyway.
"""

from __future__ import annotations

import logging
import math
import os

import torch

log = logging.getLogger(__name__)

BACKENDS = ("auto", "triton", "torch")
ENV_BACKEND = "LUM_ATTENTION_BACKEND"
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TRITON_MAX_HEAD_DIM = 128  # registers/shared memory of one (BLOCK_M, D) tile; D is padded to a power of 2
TRITON_MIN_HEAD_DIM = 16  # GPU tl.dot needs every dim >= 16
_logged: set[tuple[str, str, str]] = set()


def _check_tensor(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        # ValueError, not TypeError: the contract's one error type for bad input at the edges
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")  # noqa: TRY004
    if not x.is_contiguous():
        raise ValueError(f"{name} must be contiguous (strides {tuple(x.stride())}); call .contiguous()")
    return x


def validate(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
             prefix_lens: torch.Tensor, scale: float | None) -> tuple[list[int], list[int]]:
    """Check every argument; return host copies (offsets, prefixes). Raises a one-line ValueError."""
    for name, x in (("q", q), ("k", k), ("v", v), ("cu_seqlens", cu_seqlens), ("prefix_lens", prefix_lens)):
        _check_tensor(name, x)
    if q.dim() != 3:
        raise ValueError(f"q must be 3-D (T, H, D), got shape {tuple(q.shape)}")
    if k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"k and v must be 3-D (T, H_kv, D), got {tuple(k.shape)} and {tuple(v.shape)}")
    t, h, d = q.shape
    if k.shape != v.shape:
        raise ValueError(f"v shape {tuple(v.shape)} must equal k shape {tuple(k.shape)}")
    if k.shape[0] != t or k.shape[2] != d:
        raise ValueError(f"k shape {tuple(k.shape)} must be (T={t}, H_kv, D={d}) to match q {tuple(q.shape)}")
    h_kv = k.shape[1]
    if h_kv == 0 or h == 0 or h % h_kv != 0:
        raise ValueError(f"q heads H={h} must be a positive multiple of k/v heads H_kv={h_kv}")
    if d == 0:
        raise ValueError("q head dim D must be > 0")
    if q.dtype not in FLOAT_DTYPES:
        raise ValueError(f"q dtype {q.dtype} not supported; use float32, float16 or bfloat16")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"k/v dtypes {k.dtype}/{v.dtype} must equal q dtype {q.dtype}")
    for name, x in (("k", k), ("v", v), ("cu_seqlens", cu_seqlens), ("prefix_lens", prefix_lens)):
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}")
    if cu_seqlens.dtype != torch.int32:
        raise ValueError(f"cu_seqlens must be int32, got {cu_seqlens.dtype}")
    if prefix_lens.dtype != torch.int32:
        raise ValueError(f"prefix_lens must be int32, got {prefix_lens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise ValueError(f"cu_seqlens must be 1-D (B+1,), got shape {tuple(cu_seqlens.shape)}")
    n_seq = cu_seqlens.numel() - 1
    if prefix_lens.shape != (n_seq,):
        raise ValueError(f"prefix_lens shape {tuple(prefix_lens.shape)} must be (B={n_seq},) for "
                         f"cu_seqlens of {n_seq + 1} offsets")
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite float or None, got {scale!r}")
    offsets = [int(x) for x in cu_seqlens.tolist()]
    prefixes = [int(x) for x in prefix_lens.tolist()]
    if offsets[0] != 0:
        raise ValueError(f"cu_seqlens[0] must be 0, got {offsets[0]}")
    if offsets[-1] != t:
        raise ValueError(f"cu_seqlens[-1]={offsets[-1]} must equal T={t} (q.shape[0])")
    for b in range(n_seq):
        if offsets[b + 1] < offsets[b]:
            raise ValueError(f"cu_seqlens must be non-decreasing: cu_seqlens[{b + 1}]={offsets[b + 1]} "
                             f"< cu_seqlens[{b}]={offsets[b]}")
        if not 0 <= prefixes[b] <= offsets[b + 1] - offsets[b]:
            length = offsets[b + 1] - offsets[b]
            raise ValueError(f"prefix_lens[{b}]={prefixes[b]} must be in [0, length={length}]")
    return offsets, prefixes


def _log_once(requested: str, chosen: str, device: torch.device, why: str) -> None:
    key = (requested, chosen, device.type)
    if key not in _logged:
        _logged.add(key)
        log.info("grouped_query_attention: backend=%s (requested %s, device %s): %s",
                 chosen, requested, device.type, why)


def resolve_backend(backend: str, device: torch.device, *, needs_grad: bool, causal_only: bool) -> str:
    """The backend that will run: explicit argument > LUM_ATTENTION_BACKEND > device (CUDA -> triton)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    requested = backend
    why = "explicit argument"
    if backend == "auto":
        env = os.environ.get(ENV_BACKEND, "auto").strip().lower() or "auto"
        if env not in BACKENDS:
            raise ValueError(f"{ENV_BACKEND} must be one of {BACKENDS}, got {env!r}")
        backend, why = env, f"{ENV_BACKEND}={env}"
        if backend == "auto":
            backend = "triton" if device.type == "cuda" else "torch"
            why = "CUDA tensors" if backend == "triton" else "no CUDA: triton needs a GPU"
            if backend == "triton" and needs_grad and not causal_only:
                backend, why = "torch", "fallback: triton backward covers only prefix_lens == lengths"
    _log_once(requested, backend, device, why)
    return backend


def grouped_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                            prefix_lens: torch.Tensor, *, scale: float | None = None,
                            backend: str = "auto") -> torch.Tensor:
    """Jagged grouped-query masked attention; see the module docstring for shapes and the mask."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    offsets, prefixes = validate(q, k, v, cu_seqlens, prefix_lens, scale)
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    causal_only = all(prefixes[b] == offsets[b + 1] - offsets[b] for b in range(len(prefixes)))
    chosen = resolve_backend(backend, q.device, needs_grad=needs_grad, causal_only=causal_only)
    if chosen == "torch":
        from kernels.torch_grouped import torch_grouped_attention

        return torch_grouped_attention(q, k, v, cu_seqlens, prefix_lens, scale=scale,
                                       offsets=offsets, prefixes=prefixes)
    if q.dtype not in TRITON_DTYPES:
        raise ValueError(f"q dtype {q.dtype} not supported by backend 'triton'; use fp32, fp16 or bf16")
    if not TRITON_MIN_HEAD_DIM <= q.shape[2] <= TRITON_MAX_HEAD_DIM:
        raise ValueError(f"head dim D={q.shape[2]} must be in [{TRITON_MIN_HEAD_DIM}, "
                         f"{TRITON_MAX_HEAD_DIM}] for backend 'triton'")
    if needs_grad and not causal_only:
        raise ValueError("backend 'triton' has no backward for prefix_lens < lengths; use backend='torch' "
                         "or 'auto'")
    if q.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"backend 'triton' needs CUDA tensors (q is on {q.device}) or TRITON_INTERPRET=1")
    from kernels.triton_grouped import triton_grouped_attention

    return triton_grouped_attention(q, k, v, cu_seqlens, prefix_lens, scale=scale,
                                    offsets=offsets, prefixes=prefixes)
