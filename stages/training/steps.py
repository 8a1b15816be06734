"""Where a training step's sequences come from: every sequence in memory (``MemorySteps``), or a stream of one
rank's sequences cut into shuffle buffers (``StreamSteps``). Both are seeded by (seed, epoch) alone, so a
resumed run replays exactly the steps an uninterrupted one runs.

A source gives ``steps_per_epoch(cfg, rank, world)`` (this rank's need; the loop agrees on the maximum over
ranks) and ``epoch(cfg, epoch, rank, world, steps, skip)``: exactly ``steps`` (batch, idle) pairs, the first
``skip`` of them None (a resume skips them without building batches). ``idle``: this rank has no row of its own
in the step and runs the batch with its loss multiplied by 0, so DDP's all-reduce still sees every parameter.

Memory: ``MemorySteps`` holds every sequence (each rank all of them; rank r takes rows ``r::world`` of every
step). ``StreamSteps`` holds at most ``shuffle`` sequences: each rank streams its own users (``windows(epoch)``,
in the same order every epoch), fills a buffer of ``shuffle`` sequences, sorts it by user id, then permutes,
packs best-fit and permutes the rows exactly as ``epoch_rows`` does, and yields its steps of
``len(range(rank, rows_per_step, world))`` rows; steps never straddle two buffers. With one buffer and one
rank the steps are ``MemorySteps``' on the same sequences in user order (test_pretrain_stream).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from stages.training.packing import PackedBatch, Sequences, best_fit_pack, make_batch, pack_fill

# one training sequence of a stream: (user_id, item rows, condition ids, epoch seconds or None)
Window = tuple[int, np.ndarray, np.ndarray, np.ndarray | None]
Step = tuple[PackedBatch, bool] | None


def epoch_rows(seqs: Sequences, cfg, epoch: int, rng: np.random.Generator | None = None) -> list[list[int]]:
    """Packed rows (lists of sequence indices) of epoch ``epoch``, deterministic given cfg.seed (or ``rng``)."""
    rng = np.random.default_rng(cfg.seed + epoch) if rng is None else rng
    order = rng.permutation(len(seqs))
    rows = best_fit_pack(2 * seqs.lengths[order], cfg.row_tokens)
    rows = [[int(order[i]) for i in r] for r in rows]
    return [rows[i] for i in rng.permutation(len(rows))]


def rank_rows(rows_per_step: int, rank: int, world: int) -> int:
    """Rows of one step that rank ``rank`` of ``world`` trains (rows ``rank::world`` of the global batch)."""
    return len(range(rank, rows_per_step, world))


def _batch(seqs: Sequences, rows: list[list[int]], row_tokens: int) -> PackedBatch:
    return make_batch(seqs, [s for r in rows for s in r], [j for j, r in enumerate(rows) for _ in r], row_tokens)


class MemorySteps:
    """Every sequence in memory; every rank packs all of them and trains rows ``rank::world`` of each step."""

    def __init__(self, seqs: Sequences) -> None:
        self.seqs = seqs
        self.has_ts = seqs.ts is not None
        self._rows: tuple[int, list[list[int]]] = (-1, [])

    def _epoch_rows(self, cfg, epoch: int) -> list[list[int]]:
        if self._rows[0] != epoch:
            self._rows = (epoch, epoch_rows(self.seqs, cfg, epoch))
        return self._rows[1]

    def __len__(self) -> int:
        return len(self.seqs)

    def steps_per_epoch(self, cfg, rank: int, world: int) -> int:
        return math.ceil(len(self._epoch_rows(cfg, 0)) / cfg.rows_per_step)

    def fill(self, cfg, epoch: int) -> float:
        return pack_fill(2 * self.seqs.lengths, self._epoch_rows(cfg, epoch), cfg.row_tokens)

    def epoch(self, cfg, epoch: int, rank: int, world: int, steps: int, skip: int = 0) -> Iterator[Step]:
        rows = self._epoch_rows(cfg, epoch)
        for k in range(steps):
            if k < skip:
                yield None
                continue
            step_rows = rows[k * cfg.rows_per_step:(k + 1) * cfg.rows_per_step]
            mine = step_rows[rank::world]
            # fewer rows than ranks (a small last step): run the step's first row with loss 0 (module docstring)
            yield _batch(self.seqs, mine or step_rows[:1], cfg.row_tokens), not mine


@dataclass
class BufferStats:
    """What one rank's stream packs per epoch (the same every epoch: buffers hold the same users)."""

    buffer_rows: list[int]   # packed rows of each buffer, in stream order
    sequences: int           # sequences of the rank
    tokens: int              # their tokens (2 per behaviour)


def count_buffers(lengths: Iterator[int], shuffle: int, row_tokens: int) -> BufferStats:
    """``BufferStats`` of a stream of sequence lengths (behaviours) cut into buffers of ``shuffle`` sequences:
    what ``StreamSteps`` will pack, computed from lengths alone (the row count of best-fit decreasing
    depends only on the buffer's lengths, not on their order)."""
    rows, buf, n, tokens = [], [], 0, 0
    for length in lengths:
        buf.append(2 * length)
        n, tokens = n + 1, tokens + 2 * length
        if len(buf) == shuffle:
            rows.append(len(best_fit_pack(np.asarray(buf), row_tokens)))
            buf = []
    if buf:
        rows.append(len(best_fit_pack(np.asarray(buf), row_tokens)))
    return BufferStats(buffer_rows=rows, sequences=n, tokens=tokens)


class StreamSteps:
    """One rank's sequences streamed per epoch through a shuffle buffer of ``shuffle`` sequences.

    windows: epoch -> this rank's sequences, the same ones in the same order every epoch (a fresh pass over
    the data). stats: their ``count_buffers``. placeholder: one sequence an idle step runs (loss 0) when this
    rank has no row left (it may come from another rank). ``peak_held``: the most sequences the buffer held.
    """

    def __init__(self, windows: Callable[[int], Iterator[Window]], stats: BufferStats, *, shuffle: int,
                 has_ts: bool, placeholder: Window | None) -> None:
        if shuffle < 1:
            raise ValueError(f"shuffle_users must be >= 1, got {shuffle}")
        self.windows, self.stats, self.shuffle, self.has_ts = windows, stats, shuffle, has_ts
        self.placeholder = placeholder
        self.peak_held = 0

    def __len__(self) -> int:
        return self.stats.sequences

    def steps_per_epoch(self, cfg, rank: int, world: int) -> int:
        n = rank_rows(cfg.rows_per_step, rank, world)
        if n == 0:
            raise ValueError(f"rows_per_step {cfg.rows_per_step} must be >= the number of ranks ({world}): "
                             "each rank streams users of its own")
        return sum(math.ceil(r / n) for r in self.stats.buffer_rows)

    def fill(self, cfg, epoch: int) -> float:
        return self.stats.tokens / max(1, sum(self.stats.buffer_rows) * cfg.row_tokens)

    def epoch(self, cfg, epoch: int, rank: int, world: int, steps: int, skip: int = 0) -> Iterator[Step]:
        n_mine = rank_rows(cfg.rows_per_step, rank, world)
        rng = np.random.default_rng(cfg.seed + epoch if rank == 0 else (cfg.seed + epoch, rank))
        done = 0
        for seqs in self._buffers(epoch):
            rows = epoch_rows(seqs, cfg, epoch, rng)
            for start in range(0, len(rows), n_mine):
                if done == steps:
                    raise ValueError(f"rank {rank}: the stream holds more rows than its {steps} steps per epoch "
                                     "(the partition changed while training?)")
                yield None if done < skip else (_batch(seqs, rows[start:start + n_mine], cfg.row_tokens), False)
                done += 1
            del seqs, rows  # before the next buffer fills: one buffer held at a time
        for _ in range(done, steps):
            yield None if done < skip else (self._idle(cfg), True)
            done += 1

    def _buffers(self, epoch: int) -> Iterator[Sequences]:
        buf: list[Window] = []
        for window in self.windows(epoch):
            buf.append(window)
            self.peak_held = max(self.peak_held, len(buf))
            if len(buf) == self.shuffle:
                yield self._sequences(buf)
                buf = []
        if buf:
            yield self._sequences(buf)

    def _sequences(self, buf: list[Window]) -> Sequences:
        order = np.argsort(np.asarray([w[0] for w in buf], dtype=np.int64), kind="stable")  # user order
        buf[:] = [buf[i] for i in order]
        seqs = Sequences.from_lists([w[1] for w in buf], [w[2] for w in buf],
                                    [w[3] for w in buf] if self.has_ts else None)
        buf.clear()
        return seqs

    def _idle(self, cfg) -> PackedBatch:
        if self.placeholder is None:
            raise ValueError("no sequence on any rank to run an idle step with")
        _, items, conds, ts = self.placeholder
        seqs = Sequences.from_lists([items], [conds], [ts] if self.has_ts else None)
        return _batch(seqs, [[0]], cfg.row_tokens)
