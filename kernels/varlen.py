"""torch's varlen flash attention (``torch.nn.attention.varlen.varlen_attn``) for packed causal attention.

CUDA only, fp16/bf16 only, causal only (prefix_lens == lengths): the training path on GPUs, with
torch's own backward. Its signature moved between torch releases (``is_causal`` first, then
``window_size=(-1, 0)`` for causal, then ``enable_gqa``): ``varlen_causal_attention`` adapts to the
installed one, repeating k/v heads when the build has no ``enable_gqa``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import torch

VARLEN_DTYPES = (torch.float16, torch.bfloat16)


@functools.cache
def varlen_fn() -> Callable | None:
    """torch's varlen_attn when this torch build has it, else None."""
    try:
        # deferred: an optional module (CUDA builds of torch); its absence selects another path
        from torch.nn.attention.varlen import varlen_attn  # type: ignore[attr-defined]
    except ImportError:
        return None
    return varlen_attn


@functools.cache
def _params() -> frozenset[str]:
    fn = varlen_fn()
    return frozenset(inspect.signature(fn).parameters) if fn is not None else frozenset()


def available(device: torch.device) -> bool:
    """True when varlen attention can run on ``device`` (CUDA and a torch build that has it)."""
    return device.type == "cuda" and varlen_fn() is not None


def varlen_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                            max_len: int, *, scale: float | None = None) -> torch.Tensor:
    """Packed causal attention. q (T, H, D), k/v (T, H_kv, D) CUDA fp16/bf16; cu_seqlens (B+1,) int32;
    max_len: the longest sequence (host int). Returns (T, H, D). Inputs are assumed valid (the
    dispatcher checks)."""
    fn, params = varlen_fn(), _params()
    if fn is None:
        raise ValueError("backend 'varlen' needs torch.nn.attention.varlen (a newer torch build)")
    kwargs: dict = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    if scale is not None:
        if "scale" not in params:
            q = q * (scale * q.shape[-1] ** 0.5)  # this build always scales by D^-0.5
        else:
            kwargs["scale"] = scale
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:
            group = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    return fn(q.contiguous(), k.contiguous(), v.contiguous(), cu_seqlens, cu_seqlens, max_len, max_len,
              **kwargs)
