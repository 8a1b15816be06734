"""Triton backend entry: jagged grouped-query masked attention, differentiable for causal batches.

The forward kernel is kernels.triton_forward, the causal backward kernels.triton_backward, the host-side
tile table kernels.tiles. Inputs are validated by kernels.dispatch before they get here.
"""

from __future__ import annotations

import torch

from kernels.tiles import TileTable, build_tiles
from kernels.triton_backward import _backward
from kernels.triton_forward import _forward


class _CausalAttention(torch.autograd.Function):
    """Packed causal attention (prefix_lens == lengths) with the Triton forward and backward."""

    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens, prefix_lens, tiles, scale, max_len):
        out, lse = _forward(q, k, v, cu_seqlens, prefix_lens, tiles, scale, max_len=max_len,
                            max_prefix=max_len, store_lse=True)
        ctx.save_for_backward(q, k, v, out, lse, cu_seqlens, tiles.history)  # causal: history tiles only
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, cu_seqlens, tiles = ctx.saved_tensors
        dq, dk, dv = _backward(q, k, v, out, lse, grad_out, cu_seqlens, tiles, ctx.scale)
        return dq, dk, dv, None, None, None, None, None


def triton_grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                             prefix_lens: torch.Tensor, *, scale: float | None = None,
                             offsets: list[int] | None = None, prefixes: list[int] | None = None,
                             out: torch.Tensor | None = None, tiles: TileTable | None = None) -> torch.Tensor:
    """Launch the Triton kernel. q: (T, H, D), k/v: (T, H_kv, D), cu_seqlens (B+1,) int32, prefix_lens (B,)
    int32, all contiguous on one device (validated by the dispatcher). ``offsets``/``prefixes``: host
    copies (saves a sync). ``tiles``: the batch's tile tables on q's device (``kernels.tiles.build_tiles``;
    a plan builds them once for every layer), else built here. ``out``: optional preallocated (T, H, D)
    output (tests poison it with NaN). Differentiable only when prefix_lens == lengths. Returns (T, H, D)
    in q.dtype."""
    _t, _h, d = q.shape
    scale = d ** -0.5 if scale is None else float(scale)
    offsets = [int(x) for x in cu_seqlens.tolist()] if offsets is None else offsets
    prefixes = [int(x) for x in prefix_lens.tolist()] if prefixes is None else prefixes
    lengths = [offsets[b + 1] - offsets[b] for b in range(len(prefixes))]
    max_len = max(lengths, default=0)
    tiles = build_tiles(offsets, prefixes).to(q.device) if tiles is None else tiles
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if needs_grad:
        if prefixes != lengths:
            raise ValueError("prefix_lens must equal the sequence lengths for the triton backward")
        return _CausalAttention.apply(q, k, v, cu_seqlens, prefix_lens, tiles, scale, max_len)
    result, _ = _forward(q, k, v, cu_seqlens, prefix_lens, tiles, scale, max_len=max_len,
                         max_prefix=max(prefixes, default=0), store_lse=False, out=out)
    return result
