"""Argument checks shared by every backend: each bad input is one ``ValueError`` naming the argument,
raised before any launch.

Contract: q (T, H, D), k/v (T, H_kv, D), H % H_kv == 0, one float dtype, contiguous, one device;
cu_seqlens int32 (B+1,) with 0 = cu[0] <= ... <= cu[B] = T; prefix_lens int32 (B,) with
0 <= prefix_lens[b] <= length b. Validation copies cu_seqlens/prefix_lens to the host once (one device
sync): the Triton launcher needs the max length for its grid anyway, and the torch paths key their
layout caches on the host values.
"""

from __future__ import annotations

import math
import os

import torch

from kernels.varlen import VARLEN_DTYPES, available

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TRITON_MAX_HEAD_DIM = 128  # registers/shared memory of one (BLOCK_M, D) tile; D is padded to a power of 2
TRITON_MIN_HEAD_DIM = 16  # GPU tl.dot needs every dim >= 16


def _check_tensor(name: str, x: object, *, contiguous: bool = True) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        # ValueError, not TypeError: the contract's one error type for bad input at the edges
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")  # noqa: TRY004
    if contiguous and not x.is_contiguous():
        raise ValueError(f"{name} must be contiguous (strides {tuple(x.stride())}); call .contiguous()")
    return x


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, contiguous: bool = True) -> None:
    """Shapes, dtypes and devices of q, k, v (no device sync)."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, x, contiguous=contiguous)
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
    for name, x in (("k", k), ("v", v)):
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}")


def check_offsets(cu_seqlens: torch.Tensor, prefix_lens: torch.Tensor | None, *, total: int | None,
                  device: torch.device) -> tuple[list[int], list[int]]:
    """cu_seqlens and prefix_lens (None: the lengths, plain causal); returns host copies (offsets,
    prefixes). ``total``: T that cu_seqlens[-1] must equal (None: not checked)."""
    _check_tensor("cu_seqlens", cu_seqlens)
    if prefix_lens is not None:
        _check_tensor("prefix_lens", prefix_lens)
    for name, x in (("cu_seqlens", cu_seqlens), ("prefix_lens", prefix_lens)):
        if x is not None and x.device != device:
            raise ValueError(f"{name} is on {x.device} but q is on {device}")
    if cu_seqlens.dtype != torch.int32:
        raise ValueError(f"cu_seqlens must be int32, got {cu_seqlens.dtype}")
    if prefix_lens is not None and prefix_lens.dtype != torch.int32:
        raise ValueError(f"prefix_lens must be int32, got {prefix_lens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise ValueError(f"cu_seqlens must be 1-D (B+1,), got shape {tuple(cu_seqlens.shape)}")
    n_seq = cu_seqlens.numel() - 1
    if prefix_lens is not None and prefix_lens.shape != (n_seq,):
        raise ValueError(f"prefix_lens shape {tuple(prefix_lens.shape)} must be (B={n_seq},) for "
                         f"cu_seqlens of {n_seq + 1} offsets")
    offsets = [int(x) for x in cu_seqlens.tolist()]
    if offsets[0] != 0:
        raise ValueError(f"cu_seqlens[0] must be 0, got {offsets[0]}")
    if total is not None and offsets[-1] != total:
        raise ValueError(f"cu_seqlens[-1]={offsets[-1]} must equal T={total} (q.shape[0])")
    for b in range(n_seq):
        if offsets[b + 1] < offsets[b]:
            raise ValueError(f"cu_seqlens must be non-decreasing: cu_seqlens[{b + 1}]={offsets[b + 1]} "
                             f"< cu_seqlens[{b}]={offsets[b]}")
    if prefix_lens is None:
        return offsets, [offsets[b + 1] - offsets[b] for b in range(n_seq)]
    prefixes = [int(x) for x in prefix_lens.tolist()]
    for b in range(n_seq):
        if not 0 <= prefixes[b] <= offsets[b + 1] - offsets[b]:
            length = offsets[b + 1] - offsets[b]
            raise ValueError(f"prefix_lens[{b}]={prefixes[b]} must be in [0, length={length}]")
    return offsets, prefixes


def check_scale(scale: object) -> None:
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite float or None, got {scale!r}")


def validate(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
             prefix_lens: torch.Tensor, scale: float | None) -> tuple[list[int], list[int]]:
    """Check every argument of grouped_query_attention; return host copies (offsets, prefixes)."""
    for name, x in (("cu_seqlens", cu_seqlens), ("prefix_lens", prefix_lens)):
        _check_tensor(name, x)
    check_qkv(q, k, v)
    check_scale(scale)
    return check_offsets(cu_seqlens, prefix_lens, total=q.shape[0], device=q.device)


def check_backend(chosen: str, q: torch.Tensor, *, needs_grad: bool, causal_only: bool) -> None:
    """What the chosen backend cannot run (dtype, head dim, device, gradients on a grouped batch)."""
    if chosen == "triton":
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
    elif chosen == "varlen":
        if not causal_only:
            raise ValueError("backend 'varlen' is causal only: prefix_lens must equal the sequence lengths")
        if q.dtype not in VARLEN_DTYPES:
            raise ValueError(f"q dtype {q.dtype} not supported by backend 'varlen'; use fp16 or bf16")
        if not available(q.device):
            raise ValueError(f"backend 'varlen' needs CUDA tensors (q is on {q.device}) and a torch build "
                             "with torch.nn.attention.varlen")
