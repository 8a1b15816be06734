"""Host-side tile tables of the Triton grouped-query kernels (torch only: no triton import).

A sequence of length L with P history tokens is split into tiles ``(sequence, first row, kind)``:
history tiles (kind 0, ``TILE`` = 128 rows) cover rows [0, P), condition tiles (kind 1, ``cond_rows`` rows)
cover rows [P, L). Every token row lies in exactly one tile. The two kinds are separate tables, launched
separately: a history tile's BLOCK_M divides TILE, so one table serves every autotuned config; a condition
tile is one program of ``cond_rows`` = the batch's most conditions a sequence, rounded up to a power of two
in [16, 64] (16 conditions fill a 16-row tile rather than a quarter of a 64-row one). Each table is sorted
by the keys its tiles visit, most first, so a very long sequence's tiles start first (longest-processing-time
order for jagged batches).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TILE = 128  # rows per history tile; every history BLOCK_M divides it
COND_ROWS = (16, 32, 64)  # rows per condition tile (tl.dot needs >= 16); more conditions take several tiles


def prev_pow2(n: int) -> int:
    """Largest power of two <= max(n, 1): the autotune key bucket of a length."""
    return 1 << (max(n, 1).bit_length() - 1)


def condition_rows(max_conditions: int) -> int:
    """Rows of a condition tile for a batch whose sequences have at most ``max_conditions`` conditions."""
    need = 1 << max(max_conditions - 1, 0).bit_length()  # next power of two >= max_conditions
    return min(COND_ROWS[-1], max(COND_ROWS[0], need))


@dataclass(frozen=True)
class TileTable:
    """``history`` (n_h, 3) and ``conditions`` (n_c, 3) int32 rows (sequence, first row, kind), each sorted
    by cost descending; history tiles have TILE rows, condition tiles ``cond_rows``."""

    history: torch.Tensor
    conditions: torch.Tensor
    cond_rows: int

    def to(self, device: torch.device | str) -> TileTable:
        return TileTable(self.history.to(device), self.conditions.to(device), self.cond_rows)


def _table(seq_counts: torch.Tensor, first_row: torch.Tensor, tile: int, kind: int,
           cost_of: torch.Tensor) -> torch.Tensor:
    """Tiles of ``tile`` rows over ``seq_counts[b]`` rows from ``first_row[b]``, sorted by cost descending."""
    counts = (seq_counts + tile - 1) // tile
    seq = torch.repeat_interleave(torch.arange(seq_counts.numel()), counts)
    within = torch.arange(seq.numel()) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    start = first_row[seq] + within * tile
    cost = start + tile if kind == 0 else cost_of[seq]
    table = torch.stack([seq, start, torch.full_like(seq, kind)], 1)
    return table[torch.argsort(cost, descending=True, stable=True)].to(torch.int32).contiguous()


def build_tiles(offsets: list[int], prefixes: list[int], *, tile: int = TILE) -> TileTable:
    """The tile tables of one batch. ``offsets``: host cu_seqlens (B+1); ``prefixes``: host prefix_lens (B).
    O(n_tiles) on the host; the caller copies them to the device (``TileTable.to``)."""
    cu = torch.tensor(offsets, dtype=torch.int64)
    pre = torch.tensor(prefixes, dtype=torch.int64)
    conds = cu[1:] - cu[:-1] - pre
    rows = condition_rows(int(conds.max()) if conds.numel() else 0)
    history = _table(pre, torch.zeros_like(pre), tile, 0, pre)
    conditions = _table(conds, pre, rows, 1, pre + 1)  # a condition row visits its history and itself
    return TileTable(history, conditions, rows)
