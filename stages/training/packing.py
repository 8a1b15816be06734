"""Best-fit sequence packing into rows of a fixed token budget, and the batches the trainer feeds the model.

Sequences (L behaviours = 2L tokens) are packed best-fit-decreasing into rows of ``row_tokens``: longest first,
each into the open row with the least room that still fits it. Attention is block-diagonal causal inside a row
and positions restart at every sequence, so a packed sequence sees exactly what it would see alone
(test_packing checks loss and gradients). Nothing is split or cropped: a sequence longer than a row is an
error (the trainer keeps ``2 * max_len <= row_tokens``). Batches are jagged: flat behaviour tensors plus
``cu_seqlens`` (behaviour offsets, int32 (B+1,)) and ``row_of_seq`` (B,); token offsets are ``2 * cu_seqlens``.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np
import torch


def best_fit_pack(lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """Pack sequences of ``lengths`` into rows of ``capacity`` (same unit); returns sequence indices per row.

    Best-fit decreasing, O(n log n) lookups: ties in length keep input order, so the result is
    deterministic. Raises ValueError naming the first sequence longer than ``capacity``.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if capacity <= 0:
        raise ValueError(f"capacity must be > 0, got {capacity}")
    too_long = np.nonzero(lengths > capacity)[0]
    if too_long.size:
        i = int(too_long[0])
        raise ValueError(f"sequence {i} has length {int(lengths[i])} > row capacity {capacity}")
    order = np.argsort(-lengths, kind="stable")
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # sorted (remaining capacity, row index) of rows that can take more
    for i in order:
        n = int(lengths[i])
        k = bisect.bisect_left(room, (n, -1))
        if k < len(room):
            left, r = room.pop(k)
        else:
            left, r = capacity, len(rows)
            rows.append([])
        rows[r].append(int(i))
        if left - n > 0:
            bisect.insort(room, (left - n, r))
    return rows


def pack_fill(lengths: np.ndarray, rows: list[list[int]], capacity: int) -> float:
    """Fraction of row slots holding real tokens (1.0 = no padding at all)."""
    used = int(np.asarray(lengths, dtype=np.int64).sum())
    return used / max(1, len(rows) * capacity)


@dataclass
class Sequences:
    """All training sequences as flat behaviour arrays (jagged): sequence s is ``items[offsets[s]:offsets[s+1]]``."""

    items: np.ndarray     # (N,) int64 item rows
    conds: np.ndarray     # (N,) int64 condition ids
    offsets: np.ndarray   # (S+1,) int64
    ts: np.ndarray | None = None  # (N,) int64 epoch seconds (time-aware models), or None

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return int(self.offsets.size - 1)

    @classmethod
    def from_lists(cls, items: list[np.ndarray], conds: list[np.ndarray],
                   ts: list[np.ndarray] | None = None) -> Sequences:
        lens = np.asarray([len(x) for x in items], dtype=np.int64)
        offsets = np.zeros(lens.size + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        cat = (lambda xs: np.concatenate(xs).astype(np.int64)) if len(items) else (lambda xs: np.zeros(0, np.int64))
        return cls(items=cat(items), conds=cat(conds), offsets=offsets, ts=None if ts is None else cat(ts))


@dataclass
class PackedBatch:
    """One training step's input: whole sequences laid out row by row (torch tensors).

    items/conds: (N,) behaviour rows/ids; cu_seqlens: (B+1,) int32 behaviour offsets; row_of_seq: (B,)
    int64, non-decreasing (the sequences of one row are contiguous); row_tokens: token capacity per row
    (None = every sequence on its own row, the unpacked layout).
    """

    items: object
    conds: object
    cu_seqlens: object
    row_of_seq: object | None
    row_tokens: int | None
    ts: object | None = None  # (N,) int64 epoch seconds, when the sequences carry them

    @property
    def n_tokens(self) -> int:
        return 2 * int(self.items.shape[0])


def make_batch(seqs: Sequences, seq_ids: list[int], row_of_seq: list[int] | None,
               row_tokens: int | None) -> PackedBatch:
    """Gather sequences ``seq_ids`` (in order) into a `PackedBatch`."""
    idx = np.asarray(seq_ids, dtype=np.int64)
    starts, ends = seqs.offsets[idx], seqs.offsets[idx + 1]
    lens = ends - starts
    gather = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)]) if idx.size else np.zeros(0, np.int64)
    cu = np.zeros(idx.size + 1, dtype=np.int64)
    np.cumsum(lens, out=cu[1:])
    return PackedBatch(items=torch.from_numpy(seqs.items[gather]), conds=torch.from_numpy(seqs.conds[gather]),
                       cu_seqlens=torch.from_numpy(cu.astype(np.int32)),
                       row_of_seq=None if row_of_seq is None else torch.as_tensor(row_of_seq, dtype=torch.long),
                       row_tokens=row_tokens, ts=None if seqs.ts is None else torch.from_numpy(seqs.ts[gather]))


def packed_step_batches(seqs: Sequences, rows: list[list[int]], rows_per_step: int,
                        row_tokens: int) -> list[tuple[list[int], list[int]]]:
    """Group packed rows into steps: each step is (seq_ids, row_of_seq) for `make_batch`."""
    steps = []
    for start in range(0, len(rows), rows_per_step):
        ids, row_of = [], []
        for local, row in enumerate(rows[start:start + rows_per_step]):
            ids.extend(row)
            row_of.extend([local] * len(row))
        steps.append((ids, row_of))
    return steps
