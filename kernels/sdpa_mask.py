"""Dense-mask SDPA: packed tokens scattered into dense (R, S) rows, one boolean (R, 1, S, S) mask.

Same rule as the other backends: token i of sequence b attends causally when i < prefix_lens[b], else to
the prefix and itself; nothing crosses sequences. Several sequences may share one dense row
(``row_of_seq``, training's packed rows), so R x S stays close to the real token count; without it each
sequence gets its own row of the longest length. The mask costs O(R S^2) memory and SDPA computes the
masked-out pairs too: this is the CPU training path (torch's fused CPU kernels, autograd) and the
baseline the grouped kernels are measured against, not a fast GPU path.
Padding slots attend to themselves only (no fully masked row, so no NaN) and are dropped on the way out.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LAYOUT_CACHE_SIZE = 8  # distinct (cu_seqlens, prefix_lens, device) layouts kept for the per-call backend


@dataclass(frozen=True)
class MaskLayout:
    """Where each packed token sits in the dense grid, and the mask; shared by every layer of a forward."""

    row: torch.Tensor  # (T,) int64 dense row of each token
    col: torch.Tensor  # (T,) int64 column of each token inside its row
    allowed: torch.Tensor  # (R, 1, S, S) bool: True where query slot s may attend to key slot s'


def dense_grid(cu_tokens: torch.Tensor, row_of_seq: torch.Tensor | None = None,
               row_tokens: int | None = None) -> tuple[torch.Tensor, ...]:
    """Token placement in a dense (R, S) grid: (token_row, token_col, token_seq, token_pos, R, S).

    cu_tokens: (B+1,) token offsets; row_of_seq: (B,) non-decreasing row per sequence, or None (one row per
    sequence, S = longest sequence); row_tokens: S when rows are shared (None: the fullest row).
    token_pos is the position inside the token's own sequence (positions restart per sequence)."""
    cu = cu_tokens.to(torch.long)
    lens = cu[1:] - cu[:-1]
    n_seq = lens.numel()
    total = int(cu[-1])
    token_seq = torch.repeat_interleave(torch.arange(n_seq, device=cu.device), lens, output_size=total)
    token_pos = torch.arange(total, device=cu.device) - cu[:-1][token_seq]
    if row_of_seq is None:
        longest = int(lens.max()) if n_seq else 1
        return token_seq, token_pos, token_seq, token_pos, n_seq, max(longest, 1)
    row_of_seq = row_of_seq.to(device=cu.device, dtype=torch.long)
    if n_seq and bool((row_of_seq[1:] < row_of_seq[:-1]).any()):
        raise ValueError("row_of_seq must be non-decreasing (a row's sequences contiguous)")
    n_rows = int(row_of_seq.max()) + 1 if n_seq else 1
    # first token offset of each row = start of the first sequence on it
    first_seq = torch.searchsorted(row_of_seq, torch.arange(n_rows, device=cu.device))
    row_start = cu[first_seq.clamp(max=max(n_seq - 1, 0))]
    token_row = row_of_seq[token_seq]
    token_col = torch.arange(total, device=cu.device) - row_start[token_row]
    width = int(row_tokens) if row_tokens else int(token_col.max()) + 1
    if total and int(token_col.max()) >= width:
        raise ValueError(f"a packed row holds {int(token_col.max()) + 1} tokens > row_tokens {width}")
    return token_row, token_col, token_seq, token_pos, n_rows, width


def mask_layout(cu_tokens: torch.Tensor, prefix_lens: torch.Tensor, row_of_seq: torch.Tensor | None = None,
                row_tokens: int | None = None) -> MaskLayout:
    """The dense placement and the (R, 1, S, S) mask for one batch (build once, use in every layer)."""
    row, col, seq, pos, n_rows, width = dense_grid(cu_tokens, row_of_seq, row_tokens)
    dev = cu_tokens.device
    plen = prefix_lens.to(device=dev, dtype=torch.long)[seq]
    seq_d = torch.full((n_rows, width), -1, dtype=torch.long, device=dev).index_put((row, col), seq)
    pos_d = torch.zeros((n_rows, width), dtype=torch.long, device=dev).index_put((row, col), pos)
    pre_d = torch.zeros((n_rows, width), dtype=torch.long, device=dev).index_put((row, col), plen)
    same = (seq_d[:, :, None] == seq_d[:, None, :]) & (seq_d[:, :, None] >= 0)
    pi, pj = pos_d[:, :, None], pos_d[:, None, :]
    in_prefix = pi < pre_d[:, :, None]
    allowed = same & ((in_prefix & (pj <= pi)) | (~in_prefix & ((pj < pre_d[:, :, None]) | (pj == pi))))
    allowed = allowed | torch.eye(width, dtype=torch.bool, device=dev)[None]  # padding slots: self only
    return MaskLayout(row, col, allowed[:, None])


@functools.lru_cache(maxsize=LAYOUT_CACHE_SIZE)
def cached_layout(offsets: tuple[int, ...], prefixes: tuple[int, ...], device: torch.device) -> MaskLayout:
    """`mask_layout` with one row per sequence, cached on the host values (the layers of one forward call
    the per-call backend with the same batch). Built as normal tensors even under inference_mode."""
    with torch.inference_mode(False), torch.no_grad():
        return mask_layout(torch.tensor(offsets, device=device), torch.tensor(prefixes, device=device))


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: MaskLayout, *,
                     scale: float | None = None) -> torch.Tensor:
    """q (T, H, D), k/v (T, H_kv, D) packed -> (T, H, D) through SDPA on the dense grid of ``layout``.
    Differentiable; any float dtype SDPA takes; GQA through SDPA's ``enable_gqa``."""
    n_rows, width = layout.allowed.shape[0], layout.allowed.shape[-1]

    def to_dense(x: torch.Tensor) -> torch.Tensor:  # (R, heads, S, D)
        return x.new_zeros(n_rows, width, *x.shape[1:]).index_put((layout.row, layout.col), x).transpose(1, 2)

    out = F.scaled_dot_product_attention(to_dense(q), to_dense(k), to_dense(v), attn_mask=layout.allowed,
                                         scale=scale, enable_gqa=q.shape[1] != k.shape[1])
    return out.transpose(1, 2)[layout.row, layout.col]
