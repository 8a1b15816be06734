"""Pure-PyTorch reference for grouped-query masked attention: an explicit boolean mask per sequence.

The test oracle: slow (O(L^2) memory per sequence, a Python loop over sequences) but obviously right.
Computes in ``compute_dtype`` (float64 in tests) and returns ``q.dtype``; differentiable, so its autograd
is the oracle for the Triton backward.

Mask for sequence b with length L and prefix P (CONTRACT.md): row i < P sees keys j <= i (causal);
row i >= P (a condition token) sees keys j < P and j == i; nothing crosses sequences.
"""

from __future__ import annotations

import torch


def grouped_mask(length: int, prefix_len: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean (length, length) mask, True where query row i may attend to key column j."""
    idx = torch.arange(length, device=device)
    rows, cols = idx[:, None], idx[None, :]
    causal = cols <= rows
    query_rows = rows >= prefix_len
    return torch.where(query_rows, (cols < prefix_len) | (cols == rows), causal)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                        prefix_lens: torch.Tensor, *, scale: float | None = None,
                        compute_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Explicit-mask attention. q: (T, H, D); k, v: (T, H_kv, D) with H % H_kv == 0;
    cu_seqlens: (B+1,) offsets; prefix_lens: (B,). Returns (T, H, D) in q.dtype. No input validation
    (the dispatcher does that); every row sees at least itself, so no row is fully masked."""
    t, h, d = q.shape
    group = h // k.shape[1]
    scale = d ** -0.5 if scale is None else scale
    offsets = [int(x) for x in cu_seqlens.tolist()]
    prefixes = [int(x) for x in prefix_lens.tolist()]
    pieces = []
    for b, prefix in enumerate(prefixes):
        start, end = offsets[b], offsets[b + 1]
        if end == start:
            continue
        qb = q[start:end].to(compute_dtype).transpose(0, 1)  # (H, L, D)
        kb = k[start:end].to(compute_dtype).repeat_interleave(group, dim=1).transpose(0, 1)
        vb = v[start:end].to(compute_dtype).repeat_interleave(group, dim=1).transpose(0, 1)
        scores = (qb @ kb.transpose(1, 2)) * scale
        mask = grouped_mask(end - start, prefix, q.device)
        scores = scores.masked_fill(~mask, float("-inf"))
        pieces.append((torch.softmax(scores, dim=-1) @ vb).transpose(0, 1))
    if not pieces:
        return q.new_zeros((t, h, d))
    return torch.cat(pieces, dim=0).to(q.dtype)
