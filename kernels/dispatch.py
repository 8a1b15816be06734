"""The one attention dispatcher: every attention call of the LUM goes through here.

``grouped_query_attention(q, k, v, cu_seqlens, prefix_lens, *, scale=None, backend="auto")``
  q: (T, H, D), k, v: (T, H_kv, D), H % H_kv == 0, one float dtype, contiguous, one device;
  cu_seqlens: int32 (B+1,); prefix_lens: int32 (B,). Returns (T, H, D) in q.dtype. Token i of sequence b
  attends causally (keys <= i) when i < prefix_lens[b], else to keys < prefix_lens[b] and itself.
  prefix_lens == lengths is plain packed causal attention.
``plan_grouped_attention(cu_seqlens, prefix_lens, *, scale=None, backend="auto")``
  the same for every layer of one forward: checks the batch once (one host copy of cu_seqlens and
  prefix_lens), builds the Triton tile tables once, and returns ``attend(q, k, v)``; each call checks q/k/v
  only (no device sync).
``plan_causal_attention(cu_seqlens, *, backend="auto", row_of_seq=None, row_tokens=None, scale=None)``
  packed causal attention for training: checks the batch and builds its layout once, and returns
  ``attend(q, k, v)`` for every layer of the forward (q, k, v as above; any strides).

Backends:
  triton     kernels.triton_grouped: CUDA (TRITON_INTERPRET=1 in tests); backward only when causal
  torch      kernels.torch_grouped: bucketed SDPA, any device and float dtype, autograd
  sdpa_mask  kernels.sdpa_mask: SDPA with a dense mask; rows shared by sequences when planned with row_of_seq
  varlen     kernels.varlen: torch's varlen flash attention; CUDA, fp16/bf16, causal only
Choice: an explicit backend wins. ``grouped_query_attention`` with "auto" reads ``LUM_ATTENTION_BACKEND``
(one of BACKENDS), else takes triton for CUDA tensors and torch elsewhere (also under TRITON_INTERPRET=1:
the interpreter is a test tool); with gradients on a grouped batch, auto falls back to torch (Triton's
backward is causal only). ``plan_causal_attention`` with "auto" takes varlen on CUDA when torch has it,
else sdpa_mask (on CPU the dense mask's fused SDPA backward beats the bucketed path's several calls).
Each (entry point, requested, chosen, device) decision is logged once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch

from kernels.checks import check_backend, check_offsets, check_qkv, check_scale, validate
from kernels.sdpa_mask import cached_layout, mask_layout, masked_attention
from kernels.torch_grouped import torch_grouped_attention
from kernels.varlen import available, varlen_causal_attention

log = logging.getLogger(__name__)

BACKENDS = ("auto", "triton", "torch", "sdpa_mask", "varlen")
ENV_BACKEND = "LUM_ATTENTION_BACKEND"
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
_logged: set[tuple[str, str, str, str]] = set()


def _log_once(entry: str, requested: str, chosen: str, device: torch.device, why: str) -> None:
    key = (entry, requested, chosen, device.type)
    if key not in _logged:
        _logged.add(key)
        log.info("%s: backend=%s (requested %s, device %s): %s", entry, chosen, requested, device.type, why)


def _check_name(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def resolve_backend(backend: str, device: torch.device, *, needs_grad: bool, causal_only: bool) -> str:
    """grouped_query_attention's backend: explicit argument > LUM_ATTENTION_BACKEND > device."""
    _check_name(backend)
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
    _log_once("grouped_query_attention", requested, backend, device, why)
    return backend


def resolve_causal_backend(backend: str, device: torch.device) -> str:
    """plan_causal_attention's backend: explicit argument > varlen on CUDA (when torch has it) > sdpa_mask."""
    _check_name(backend)
    chosen, why = backend, "explicit argument"
    if backend == "auto":
        chosen = "varlen" if available(device) else "sdpa_mask"
        why = ("CUDA and torch varlen_attn" if chosen == "varlen"
               else "no CUDA varlen_attn: dense-mask SDPA over packed rows")
    _log_once("plan_causal_attention", backend, chosen, device, why)
    return chosen


def _causal_only(offsets: list[int], prefixes: list[int]) -> bool:
    """Every sequence all history (prefix_lens == lengths): plain packed causal attention."""
    return all(prefixes[b] == offsets[b + 1] - offsets[b] for b in range(len(prefixes)))


def _choose(backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal_only: bool) -> str:
    """The backend for this call (gradients decide, see resolve_backend), checked against q."""
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    chosen = resolve_backend(backend, q.device, needs_grad=needs_grad, causal_only=causal_only)
    check_backend(chosen, q, needs_grad=needs_grad, causal_only=causal_only)
    return chosen


def _run(chosen: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
         prefix_lens: torch.Tensor, offsets: list[int], prefixes: list[int], scale: float | None,
         tiles: dict | None = None) -> torch.Tensor:
    """Launch one checked backend on one checked batch. ``tiles``: a plan's cache of the Triton tile tables
    (filled on the first Triton call, reused after)."""
    if chosen == "torch":
        return torch_grouped_attention(q, k, v, cu_seqlens, prefix_lens, scale=scale, offsets=offsets,
                                       prefixes=prefixes)
    if q.shape[0] == 0:
        return q.new_zeros(q.shape)
    if chosen == "sdpa_mask":
        return masked_attention(q, k, v, cached_layout(tuple(offsets), tuple(prefixes), q.device), scale=scale)
    if chosen == "varlen":
        max_len = max(offsets[b + 1] - offsets[b] for b in range(len(prefixes)))
        return varlen_causal_attention(q, k, v, cu_seqlens, max_len, scale=scale)
    from kernels.triton_grouped import triton_grouped_attention  # deferred: triton loads only when it runs

    if tiles is not None and "table" not in tiles:
        from kernels.tiles import build_tiles

        tiles["table"] = build_tiles(offsets, prefixes).to(q.device)
    return triton_grouped_attention(q, k, v, cu_seqlens, prefix_lens, scale=scale, offsets=offsets,
                                    prefixes=prefixes, tiles=None if tiles is None else tiles["table"])


def grouped_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                            prefix_lens: torch.Tensor, *, scale: float | None = None,
                            backend: str = "auto") -> torch.Tensor:
    """Jagged grouped-query masked attention; see the module docstring for shapes and the mask."""
    _check_name(backend)
    offsets, prefixes = validate(q, k, v, cu_seqlens, prefix_lens, scale)
    chosen = _choose(backend, q, k, v, causal_only=_causal_only(offsets, prefixes))
    return _run(chosen, q, k, v, cu_seqlens, prefix_lens, offsets, prefixes, scale)


def plan_grouped_attention(cu_seqlens: torch.Tensor, prefix_lens: torch.Tensor, *, scale: float | None = None,
                           backend: str = "auto") -> Attend:
    """``grouped_query_attention`` over one batch for every layer of a forward: returns ``attend(q, k, v)``.
    The batch (cu_seqlens, prefix_lens: int32, one device) is checked and copied to the host here, once;
    the Triton tile tables are built on the first Triton call and reused. Each call checks q/k/v (shapes,
    dtypes, T = cu_seqlens[-1], the batch's device) and picks the backend as ``grouped_query_attention``
    does (gradients decide per call)."""
    _check_name(backend)
    device = cu_seqlens.device
    offsets, prefixes = check_offsets(cu_seqlens, prefix_lens, total=None, device=device)
    check_scale(scale)
    causal_only = _causal_only(offsets, prefixes)
    total = offsets[-1]
    tiles: dict = {}

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        check_qkv(q, k, v)
        if q.shape[0] != total or q.device != device:
            raise ValueError(f"q has {q.shape[0]} tokens on {q.device}; the planned batch has {total} on {device}")
        chosen = _choose(backend, q, k, v, causal_only=causal_only)
        return _run(chosen, q, k, v, cu_seqlens, prefix_lens, offsets, prefixes, scale, tiles)
    return attend


def plan_causal_attention(cu_seqlens: torch.Tensor, *, backend: str = "auto",
                          row_of_seq: torch.Tensor | None = None, row_tokens: int | None = None,
                          scale: float | None = None) -> Attend:
    """Packed causal attention over the sequences of ``cu_seqlens`` (int32 (B+1,), on the device of q):
    returns ``attend(q, k, v) -> (T, H, D)`` for every layer of one forward. The batch is checked and its
    layout built here, once (one host copy of cu_seqlens; the Triton tile tables on the first call); each
    call checks q/k/v shapes only.
    ``row_of_seq`` (B,) / ``row_tokens``: dense rows shared by several sequences (sdpa_mask only; the
    other backends need no padding)."""
    device = cu_seqlens.device
    offsets, lengths = check_offsets(cu_seqlens, None, total=None, device=device)
    check_scale(scale)
    chosen = resolve_causal_backend(backend, device)
    total = offsets[-1]

    def checked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        check_qkv(q, k, v, contiguous=False)
        if q.shape[0] != total or q.device != device:
            raise ValueError(f"q has {q.shape[0]} tokens on {q.device}; the planned batch has {total} on {device}")
        check_backend(chosen, q, needs_grad=False, causal_only=True)

    if chosen == "sdpa_mask":
        layout = mask_layout(cu_seqlens, cu_seqlens[1:] - cu_seqlens[:-1], row_of_seq, row_tokens)

        def attend_mask(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            checked(q, k, v)
            return masked_attention(q, k, v, layout, scale=scale)
        return attend_mask
    prefix_lens = torch.tensor(lengths, dtype=torch.int32, device=device)
    tiles: dict = {}  # the Triton tile tables, built on the first call

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        checked(q, k, v)
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        return _run(chosen, q, k, v, cu_seqlens, prefix_lens, offsets, lengths, scale, tiles)
    return attend
