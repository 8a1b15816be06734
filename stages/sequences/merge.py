"""Incremental ``user_sequences`` bucket by bucket: bucket b of day D = bucket b of D-1 merged with day D's rows.

Spark builds only day D's rows (``build_sequences`` over the day's events) and sends bucket b to task b, sorted by
user_id (``bucketing.bucketed``), with one marker row per bucket so that no task is empty or dropped. Task b
streams D-1's file of bucket b (one file per bucket, sorted by user_id: ``stages.warehouse.buckets``) beside the
day's rows and merges the two by user_id in Arrow: a user in both gets the last ``max_len`` of D-1's list followed
by the day's, and the sum of both ``total_events``; a user in one side keeps that side's row. D-1 is read once, in
place, never shuffled or spilled, and the task writes its bucket as one file (``Warehouse.write_arrow_days``) in
row groups of about ``ROW_GROUP_BYTES``. Memory per task: a batch of each side plus one row group of merged rows. Same rows as ``incremental.extend``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.user_sequences import LIST_COLUMNS
from stages.core.hashing import bucket_of
from stages.sequences.bucketing import one_bucket_per_file
from stages.sequences.incremental import UNKNOWN, UNRATED
from stages.warehouse import buckets as bucket_files
from stages.warehouse.arrow_write import file_schema
from stages.warehouse.store import TableStore

TABLE = "user_sequences"
COLUMNS = ("user_id", *LIST_COLUMNS, "total_events")  # what both sides of a merge hold
MARKER = "lum_marker"  # true on the one placeholder row per bucket (no user)
BATCH_ROWS = 8192  # D-1 rows decoded at a time
ROW_GROUP_BYTES = 16 << 20  # merged rows (Arrow bytes) gathered into one parquet row group


def _types() -> pa.Schema:
    full = file_schema(TABLE)
    return pa.schema([full.field(c) for c in COLUMNS])


def _lists(column: pa.ChunkedArray | pa.Array) -> tuple[pa.Array, np.ndarray]:
    """(the values of ``column``'s lists, their offsets from 0): a sliced list array's own range only."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = arr.offsets.to_numpy().astype(np.int64)
    return arr.values.slice(offsets[0], offsets[-1] - offsets[0]), offsets - offsets[0]


def _where(users: np.ndarray, side: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row of each of ``users`` in ``side`` (sorted, unique), whether it is there)."""
    if len(side) == 0:
        return np.zeros(len(users), np.int64), np.zeros(len(users), bool)
    at = np.searchsorted(side, users)
    clipped = np.minimum(at, len(side) - 1)
    return clipped, (at < len(side)) & (side[clipped] == users)


def merge_rows(prev: pa.Table, day: pa.Table, *, max_len: int) -> pa.Table:
    """``COLUMNS`` plus ``history_len`` for the users of ``prev`` and ``day`` (each sorted by user_id, unique ids,
    the types of ``_types()``), in user_id order: a user in both keeps the last ``max_len`` behaviours of its
    ``prev`` list followed by its ``day`` list, ``total_events`` summed."""
    pu = prev.column("user_id").to_numpy()
    du = day.column("user_id").to_numpy()
    users = np.union1d(pu, du)
    pi, in_p = _where(users, pu)
    di, in_d = _where(users, du)
    p_lists = {name: _lists(prev.column(name)) for name in LIST_COLUMNS}
    d_lists = {name: _lists(day.column(name)) for name in LIST_COLUMNS}
    p_off, d_off = p_lists["item_ids"][1], d_lists["item_ids"][1]
    for name in LIST_COLUMNS[1:]:  # aligned lists share their offsets, so one index takes from all four
        if not (np.array_equal(p_lists[name][1], p_off) and np.array_equal(d_lists[name][1], d_off)):
            raise ValueError(f"{TABLE}: column {name} length differs from len(item_ids) in a merged batch")
    p_len = np.where(in_p, p_off[pi + in_p] - p_off[pi], 0)  # pi + 1 where present, else a zero length
    d_len = np.where(in_d, d_off[di + in_d] - d_off[di], 0)
    total = p_len + d_len
    keep = np.minimum(total, max_len)
    p_skip = np.minimum(total - keep, p_len)  # the oldest behaviours go first: D-1's, then the day's
    d_skip = total - keep - p_skip
    starts = np.empty(2 * len(users), np.int64)
    lengths = np.empty(2 * len(users), np.int64)
    starts[0::2], lengths[0::2] = p_off[pi] + p_skip, p_len - p_skip
    starts[1::2], lengths[1::2] = p_off[-1] + d_off[di] + d_skip, d_len - d_skip
    ends = np.cumsum(lengths)
    index = pa.array(np.repeat(starts - (ends - lengths), lengths) + np.arange(ends[-1] if len(ends) else 0))
    offsets = pa.array(np.concatenate([[0], np.cumsum(keep)]).astype(np.int32), pa.int32())
    columns: dict[str, pa.Array] = {"user_id": pa.array(users, pa.int64())}
    for name in LIST_COLUMNS:
        values = pa.concat_arrays([p_lists[name][0], d_lists[name][0]]).take(index)
        columns[name] = pa.ListArray.from_arrays(offsets, values)
    p_total = prev.column("total_events").to_numpy(zero_copy_only=False)
    d_total = day.column("total_events").to_numpy(zero_copy_only=False)
    totals = np.where(in_p, p_total[pi] if len(pu) else 0, 0) + np.where(in_d, d_total[di] if len(du) else 0, 0)
    columns["total_events"] = pa.array(totals, pa.int64())
    columns["history_len"] = pa.array(keep, pa.int32())
    return pa.table(columns).cast(_types().append(pa.field("history_len", pa.int32())))


def _tables(stream: Iterator[pa.RecordBatch]) -> Iterator[pa.Table]:
    for batch in stream:
        if batch.num_rows:
            yield pa.Table.from_batches([batch])


def merge_streams(prev: Iterable[pa.RecordBatch], day: Iterable[pa.RecordBatch], *,
                  max_len: int) -> Iterator[pa.Table]:
    """``merge_rows`` over two streams sorted by user_id, in user_id order. Each round merges the rows up to the
    smaller of the two buffered maxima (all that is left once a stream ends), so one batch of each is held."""
    streams = [_tables(iter(prev)), _tables(iter(day))]
    buffers: list[pa.Table | None] = [None, None]
    empty = _types().empty_table()
    while True:
        for i in (0, 1):
            if streams[i] is not None and (buffers[i] is None or buffers[i].num_rows == 0):
                buffers[i] = next(streams[i], None)
                if buffers[i] is None:
                    streams[i] = None
        held = [i for i in (0, 1) if buffers[i] is not None and buffers[i].num_rows]
        if not held:
            return
        tops = [buffers[i].column("user_id")[-1].as_py() for i in held if streams[i] is not None]
        cutoff = min(tops) if tops else None
        sides = []
        for i in (0, 1):
            if buffers[i] is None or buffers[i].num_rows == 0:
                sides.append(empty)
                continue
            uids = buffers[i].column("user_id").to_numpy()
            n = len(uids) if cutoff is None else int(np.searchsorted(uids, cutoff, side="right"))
            sides.append(buffers[i].slice(0, n))
            buffers[i] = buffers[i].slice(n)
        yield merge_rows(sides[0], sides[1], max_len=max_len)


def _day_rows(batches: Iterable[pa.RecordBatch], bucket: int, buckets: int) -> Iterator[pa.RecordBatch]:
    """The day's rows of ``bucket`` (markers dropped) in ``COLUMNS``' types; refuses another bucket's row or rows
    out of user_id order (the partitioning went wrong: nothing may be written)."""
    types = _types()
    last = None
    for batch in batches:
        batch = batch.filter(pc.invert(batch.column(MARKER)))
        if batch.num_rows == 0:
            continue
        uids = batch.column("user_id").to_numpy()
        what = bucket_files.misplaced(uids, bucket=bucket, buckets=buckets, after=last)
        if what:
            raise RuntimeError(f"{TABLE}: the Spark task of bucket {bucket} got {what}; nothing is committed")
        last = uids[-1]
        yield pa.RecordBatch.from_arrays([batch.column(c).cast(types.field(c).type) for c in COLUMNS],
                                         schema=types)


def bucket_writer(wh: TableStore, previous: bucket_files.BucketLayout, *, ds: str, max_len: int, buckets: int):
    """The ``write_arrow_days`` function of task b: D-1's bucket b (``previous``) merged with the day's rows of
    bucket b, as rows of partition ``ds``. Task b is the shuffle partition of bucket b (``bucketing.bucketed``)."""
    def write(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext  # deferred: runs in a Spark Python worker

        bucket = TaskContext.get().partitionId()
        streams = dict(bucket_files.bucket_streams(wh, previous, index=bucket, count=buckets,
                                                   columns=list(COLUMNS), batch_rows=BATCH_ROWS, dictionary=False))
        prev = (b.cast(_types()) for b in streams.get(bucket, iter(())))
        pending: list[pa.Table] = []
        held = 0
        for table in merge_streams(prev, _day_rows(batches, bucket, buckets), max_len=max_len):
            pending.append(table)
            held += table.nbytes
            if held >= ROW_GROUP_BYTES:
                yield _row_group(pending, ds=ds, buckets=buckets)
                pending, held = [], 0
        if pending:
            yield _row_group(pending, ds=ds, buckets=buckets)

    return write


def _row_group(tables: list[pa.Table], *, ds: str, buckets: int) -> pa.RecordBatch:
    """One batch of merged rows with ``bucket`` and ``ds``: the writer makes each batch one row group."""
    table = pa.concat_tables(tables).combine_chunks()
    table = table.append_column("bucket", pa.array(bucket_of(table.column("user_id").to_numpy(), buckets),
                                                   pa.int32()))
    table = table.append_column("ds", pa.array([ds] * table.num_rows, pa.string()))
    return table.to_batches()[0] if table.num_rows else pa.RecordBatch.from_pylist([], schema=table.schema)


def markers(spark, buckets: int, ds: str, like):
    """One marker row per bucket with ``like``'s columns (nulls), ``bucket`` b and ``lum_marker`` true."""
    # deferred: pyspark loads the JVM bridge; importing the stage (configs, registry) must not
    from pyspark.sql import functions as F

    rows = spark.range(buckets).select(F.col("id").cast("int").alias("bucket"))
    cols = [F.lit(ds).alias("ds") if f.name == "ds" else F.lit(None).cast(f.dataType).alias(f.name)
            for f in like.schema.fields if f.name not in ("bucket", MARKER)]
    return rows.select(*cols, "bucket", F.lit(True).alias(MARKER))


def tally(conditions: str):
    """The write's counts over the rows written: ``unknown`` users with a ``category=<unk>`` condition and
    ``unrated`` behaviours with ``liked=<unk>`` (0 unless those features are conditions), as ``count_rows``."""
    features = conditions.split(",")

    def count(table: pa.Table) -> dict[str, int]:
        column = table.column("conditions").combine_chunks()
        flat, parents = pc.list_flatten(column), pc.list_parent_indices(column)
        out = {"unknown": 0, "unrated": 0}
        if "category" in features and len(flat):
            hit = pc.match_substring(flat, UNKNOWN).to_numpy(zero_copy_only=False)
            out["unknown"] = int(len(np.unique(parents.to_numpy()[hit])))
        if "liked" in features and len(flat):
            out["unrated"] = int(pc.sum(pc.match_substring(flat, UNRATED)).as_py() or 0)
        return out

    return count


def covers(previous: bucket_files.BucketLayout):
    """The write's check: every bucket D-1 has rows in is written (a bucket whose task never ran would lose its
    users silently) and each file holds one bucket (``bucketing.one_bucket_per_file``)."""
    def check(written) -> None:
        one_bucket_per_file(written)
        done = {stats.stats.get("minValues", {}).get("bucket") for _, stats in written}
        lost = sorted(b for b in previous.files if b not in done)
        if lost:
            raise ValueError(f"{TABLE}: bucket {lost[0]} of partition {previous.ds} was not written "
                             f"({len(lost)} bucket(s) missing); nothing committed")

    return check
