"""Host-side tile table of the Triton grouped-query kernels (torch only: no triton import).

A sequence of length L with P history tokens is split into 128-row tiles ``(sequence, first row, kind)``:
history tiles (kind 0) cover rows [0, P), condition tiles (kind 1) cover rows [P, L). Every token row lies
in exactly one tile; a kernel's BLOCK_M divides TILE, so one table serves every autotuned config. Tiles
are sorted by the keys they visit, most first, so a very long sequence's tiles start first
(longest-processing-time order for jagged batches).
"""

from __future__ import annotations

import torch

TILE = 128  # rows per scheduled tile; every BLOCK_M divides it


def prev_pow2(n: int) -> int:
    """Largest power of two <= max(n, 1): the autotune key bucket of a length."""
    return 1 << (max(n, 1).bit_length() - 1)


def build_tiles(offsets: list[int], prefixes: list[int], *, tile: int = TILE) -> torch.Tensor:
    """Tile table (n_tiles, 3) int32 rows (sequence, first row, is_condition_tile), sorted by cost
    (keys visited) descending. ``offsets``: host cu_seqlens (B+1); ``prefixes``: host prefix_lens (B).
    O(n_tiles) on the host; the caller copies it to the device."""
    cu = torch.tensor(offsets, dtype=torch.int64)
    pre = torch.tensor(prefixes, dtype=torch.int64)
    conds = cu[1:] - cu[:-1] - pre
    n_seq = pre.numel()
    parts = []
    for kind, counts_of, first_row in ((0, pre, torch.zeros_like(pre)), (1, conds, pre)):
        counts = (counts_of + tile - 1) // tile
        seq = torch.repeat_interleave(torch.arange(n_seq), counts)
        within = torch.arange(seq.numel()) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        start = first_row[seq] + within * tile
        cost = start + tile if kind == 0 else pre[seq] + 1
        parts.append((torch.stack([seq, start, torch.full_like(seq, kind)], 1), cost))
    table = torch.cat([p[0] for p in parts])
    cost = torch.cat([p[1] for p in parts])
    return table[torch.argsort(cost, descending=True, stable=True)].to(torch.int32).contiguous()
