"""Pretrain's training data as a stream: each rank reads only its share of a user_sequences partition (users with
``shard_of(user_id, world) == rank``) in record batches of ``READ_ROWS`` users, so a rank holds one record batch
and one shuffle buffer of ``shuffle_users`` sequences (``stages.training.steps.StreamSteps``), never the partition.

``open_stream`` makes one survey pass over the rank's share (item counts, row counts, distinct conditions, the
first behaviour's time) before training; the ranks then agree on the vocabulary, the counts and the first day,
and every epoch is one more pass. A rank's stream is in file order (files sorted by path), the same every epoch;
a buffer is sorted by user id before it is shuffled, so with one buffer and one rank the steps are the in-memory
path's (``load_sequences`` + ``training_windows``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist

from stages.model.vocab import Vocab
from stages.pretrain.data import check_partition, decode_rows, read_items, sequence_vocab, training_windows
from stages.training.distributed import dist_info
from stages.training.retrieval_eval import split_leave_last_out
from stages.training.steps import StreamSteps, Window, count_buffers
from stages.warehouse import buckets, spark_bridge
from stages.warehouse.commit import check_present
from stages.warehouse.facade import Warehouse
from stages.warehouse.reads import pyarrow_dataset

log = logging.getLogger(__name__)

READ_ROWS = 1024  # users per record batch read
COLUMNS = ["user_id", "item_ids", "conditions", "ts"]


def _fragments(wh: Warehouse, ds: str) -> list:
    """The partition's parquet fragments, sorted by path (the stream's order)."""
    dataset = pyarrow_dataset(wh.delta_table("user_sequences"), [("ds", "=", ds)])
    return sorted(dataset.get_fragments(), key=lambda f: f.path)


def _rank_batches(wh: Warehouse, ds: str, *, index: int, count: int, columns: Sequence[str],
                  batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Record batches (``columns``, at most ``batch_rows`` rows) of partition ``ds`` of user_sequences holding
    only the users with ``shard_of(user_id, count) == index``: only the rank's bucket files when the partition
    is bucketed and ``count`` divides the bucket count (``stages.warehouse.buckets``), else every file, filtered."""
    try:
        yield from buckets.iter_bucket_batches(wh, ds, index=index, count=count, columns=list(columns),
                                               batch_rows=batch_rows, dictionary=False)
    except (OSError, pa.ArrowInvalid) as exc:  # a file the log names may be gone or damaged: say so (as reads do)
        files = spark_bridge.snapshot_files(wh, "user_sequences", ds=ds)
        check_present(wh.table_uri("user_sequences"), "user_sequences", [rel for rel, _ in files])
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"table user_sequences: read failed ({first}); `lum verify` checks its files") from None


def files_key(wh: Warehouse, ds: str) -> str:
    """8 hex digits naming the partition's files: a resumed run streams the same files in the same order."""
    return hashlib.sha256("\n".join(f.path for f in _fragments(wh, ds)).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Plan:
    """Which sequences a run trains on, user by user (the in-memory ``_select_users`` + ``training_windows``)."""

    max_len: int
    windows: int                      # per user, newest first; 0 = all
    timed: bool                       # keep ts per behaviour
    eval: bool                        # train on the leave-last-out prefix (drop the last two behaviours)
    changed_since: np.datetime64 | None = None  # warm start: only users whose last behaviour is at or after


def user_windows(batches: Iterator[pa.RecordBatch], vocab: Vocab, plan: Plan, *, conditions: bool = True,
                 seen: dict | None = None) -> Iterator[Window]:
    """The training windows of the batches' users, user by user in stream order. seen: filled with "users" (the
    users selected) and "first" (a newest window of the first user with a behaviour, even unselected)."""
    for batch in batches:
        user_ids, items, conds, ts, last = decode_rows(batch, vocab, conditions=conditions)
        if seen is not None and seen.get("first") is None:
            u = next((i for i, x in enumerate(items) if len(x)), None)
            if u is not None:
                cut = slice(-plan.max_len, None)
                seen["first"] = (int(user_ids[u]), items[u][cut], conds[u][cut], ts[u][cut] if plan.timed else None)
        pick = np.arange(len(items)) if plan.changed_since is None else np.nonzero(last >= plan.changed_since)[0]
        if seen is not None:
            seen["users"] = seen.get("users", 0) + int(pick.size)
        sel_i, sel_c = [items[u] for u in pick], [conds[u] for u in pick]
        sel_t = [ts[u] for u in pick] if plan.timed else None
        if plan.eval:
            split = [s[0] for s in split_leave_last_out(sel_i, sel_c, sel_t)]
            sel_i, sel_c = [s[0] for s in split], [s[1] for s in split]
            sel_t = [s[2] for s in split] if plan.timed else None
        for u, i, c, t in zip(user_ids[pick].tolist(), sel_i, sel_c, sel_t or [None] * len(sel_i)):
            out = training_windows([i], [c], plan.max_len, plan.windows, ts=None if t is None else [t])
            for k in range(len(out[0])):
                yield u, out[0][k], out[1][k], out[2][k] if t is not None else None


@dataclass
class Stream:
    """A rank's training stream and what the ranks agreed on after the survey pass."""

    steps: StreamSteps
    vocab: Vocab
    item_counts: np.ndarray  # (n_item_rows,) float64 training behaviours per item row, every rank's
    first_ts: int | None     # epoch seconds of the partition's first behaviour (every rank's users)
    users: int               # users trained, every rank's
    sequences: int           # training sequences, every rank's
    files: str               # files_key


def open_stream(wh: Warehouse, ds: str, plan: Plan, *, shuffle_users: int, row_tokens: int) -> Stream:
    """Survey this rank's share once, agree with the other ranks, and return the epochs' stream."""
    check_partition(wh, ds)
    _, rank, world = dist_info()
    items = read_items(wh)
    provisional = Vocab.build(*items)  # item rows only: they come from the items table alone
    counts = np.zeros(provisional.n_item_rows, dtype=np.float64)
    local: dict = {"conditions": set(), "first_ts": None, "rows": 0}

    def lengths() -> Iterator[int]:
        def batches():
            for batch in _rank_batches(wh, ds, index=rank, count=world, columns=COLUMNS, batch_rows=READ_ROWS):
                local["rows"] += batch.num_rows
                local["conditions"].update(batch.column("conditions").flatten().unique().to_pylist())
                flat_ts = batch.column("ts").flatten().to_numpy(zero_copy_only=False).astype("datetime64[us]")
                if flat_ts.size:
                    low = int(flat_ts.astype(np.int64).min()) // 1_000_000
                    local["first_ts"] = low if local["first_ts"] is None else min(local["first_ts"], low)
                yield batch
        pending: list[np.ndarray] = []
        for _, it, _, _ in user_windows(batches(), provisional, plan, conditions=False, seen=local):
            pending.append(it)
            if len(pending) == READ_ROWS:
                counts[:] += np.bincount(np.concatenate(pending), minlength=counts.size)
                pending.clear()
            yield len(it)
        if pending:
            counts[:] += np.bincount(np.concatenate(pending), minlength=counts.size)

    stats = count_buffers(lengths(), shuffle_users, row_tokens)
    shared = _gather({"conditions": sorted(c for c in local["conditions"] if c is not None), "rows": local["rows"],
                      "first_ts": local["first_ts"], "users": local.get("users", 0), "sequences": stats.sequences,
                      "first": local.get("first")})
    if sum(s["rows"] for s in shared) == 0:
        raise ValueError(f"user_sequences partition ds={ds} is empty")
    vocab = sequence_vocab(wh, set().union(*(s["conditions"] for s in shared)), ds, items)
    firsts = [s["first_ts"] for s in shared if s["first_ts"] is not None]
    placeholder = local.get("first") or next((s["first"] for s in shared if s["first"] is not None), None)
    counts = _sum(counts)
    users, sequences = sum(s["users"] for s in shared), sum(s["sequences"] for s in shared)
    log.info("pretrain stream: rank %d of %d: %d of %d sequences, %d buffer(s) of <= %d", rank, world,
             stats.sequences, sequences, len(stats.buffer_rows), shuffle_users)

    def windows(epoch: int) -> Iterator[Window]:
        return user_windows(_rank_batches(wh, ds, index=rank, count=world, columns=COLUMNS, batch_rows=READ_ROWS),
                            vocab, plan)

    steps = StreamSteps(windows, stats, shuffle=shuffle_users, has_ts=plan.timed, placeholder=placeholder)
    return Stream(steps=steps, vocab=vocab, item_counts=counts, first_ts=min(firsts) if firsts else None,
                  users=users, sequences=sequences, files=files_key(wh, ds))


def first_day(first_ts: int | None, ds: str) -> str:
    """The day of the first behaviour (``ds`` when there is none)."""
    return dt.datetime.fromtimestamp(first_ts, dt.UTC).date().isoformat() if first_ts is not None else ds


def _gather(obj: dict) -> list[dict]:
    """Every rank's ``obj``, in rank order (one process: [obj]); objects travel over a gloo group."""
    group, _, world = dist_info()
    if group is None:
        return [obj]
    out: list = [None] * world
    dist.all_gather_object(out, obj, group=_cpu_group())
    return out


def _sum(values: np.ndarray) -> np.ndarray:
    """Element-wise sum over the ranks."""
    group, _, _ = dist_info()
    if group is None:
        return values
    t = torch.from_numpy(values.copy())
    dist.all_reduce(t, group=_cpu_group())
    return t.numpy()


_CPU_GROUP: list = []


def _cpu_group():
    """The default group when it is gloo, else one gloo group over the same ranks (made once, collectively)."""
    if dist.get_backend() == "gloo":
        return None
    if not _CPU_GROUP:
        _CPU_GROUP.append(dist.new_group(backend="gloo"))
    return _CPU_GROUP[0]
