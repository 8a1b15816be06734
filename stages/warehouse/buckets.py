"""Read a worker's buckets of a ``user_sequences`` partition, streaming, opening only those buckets' files.

The sequences stage writes partition D in B hash buckets (``bucket`` = ``stages.core.hashing.bucket_of(user_id,
B)``), one file per bucket with rows sorted by user_id, and records B in the build record of its commit
(``lum.sequences.buckets``). Worker ``index`` of ``count`` owns the buckets b with b % count == index; with count
dividing B that is exactly ``shard_of(user_id, count) == index``, the infer shard assignment. ``layout`` picks
each bucket's file from the Delta log alone (partition values and the ``bucket`` min/max of the add actions), so
a worker opens 1/count of the files. ``iter_bucket_batches`` yields the worker's rows in (bucket, user_id)
order; ``merged_by_user`` merges per-bucket streams into user_id order (each stream already sorted: no spill,
no sort of the partition). Memory: one batch of ``batch_rows`` rows per open stream (plus the parquet row
group being decoded). ``conditions`` comes back as ``list<dictionary<int32, string>>`` (``dictionary=True``): the
files store it dictionary-encoded, so each distinct string is decoded once per batch.

Fallback (one log line saying why): a partition without a recorded bucket count (written before buckets), files
without ``bucket`` stats or holding several buckets (a compaction rewrote them), or count not dividing B: every
file of the partition is read and rows of other workers are dropped (``shard_of``), in file order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stages.core.hashing import bucket_of, shard_of
from stages.warehouse.commit import filesystem_for
from stages.warehouse.reads import pyarrow_dataset
from stages.warehouse.store import TableStore

log = logging.getLogger(__name__)

TABLE = "user_sequences"
RECORD_DS, RECORD_BUCKETS = "lum.sequences.ds", "lum.sequences.buckets"  # the sequences build record's keys
HISTORY_LIMIT = 200  # newest commits searched for the partition's build record (as the incremental build)
DICTIONARY_COLUMN = "conditions"
READ_BUFFER = 1 << 20  # bytes of a column chunk read at once: every bucket's stream is open, not a row group each


@dataclass(frozen=True)
class BucketLayout:
    """Partition ``ds`` of user_sequences at ``version`` as its log and build record describe it."""

    ds: str
    version: int
    buckets: int | None  # the recorded bucket count; None for a partition written before buckets
    files: dict[int, str]  # bucket -> its file (relative to the table root); empty buckets have none
    rows: dict[int, int]  # bucket -> its rows (the log's numRecords)
    paths: list[str]  # every file of the partition
    reason: str | None  # why a bucketed read cannot serve this partition; None when it can

    def unusable(self, count: int) -> str | None:
        """Why ``count`` workers cannot read their own buckets only (None: they can)."""
        if self.reason is None and self.buckets % count:
            return f"{count} workers do not divide buckets={self.buckets}"
        return self.reason


def recorded_buckets(wh: TableStore, ds: str, version: int) -> int | None:
    """The bucket count of the newest build record of partition ``ds`` committed at or before ``version``."""
    for commit in wh.delta_table(TABLE).history(HISTORY_LIMIT):
        if commit.get("version", -1) <= version and commit.get(RECORD_DS) == ds:
            value = commit.get(RECORD_BUCKETS)
            return int(value) if value is not None and str(value).isdigit() else None
    return None


def layout(wh: TableStore, ds: str, *, version: int | None = None) -> BucketLayout:
    """``BucketLayout`` of partition ``ds`` (latest snapshot or ``version``); ValueError when it has no files."""
    table = wh.delta_table(TABLE, version)
    version = table.version()
    actions = pa.table(table.get_add_actions(flatten=True))
    actions = actions.filter(pc.equal(actions.column("partition.ds"), ds))
    paths = actions.column("path").to_pylist()
    if not paths:
        raise ValueError(f"{TABLE} has no partition ds={ds}; run `lum run sequences --ds {ds}` first")
    buckets = recorded_buckets(wh, ds, version)
    lo = actions.column("min.bucket").to_pylist() if "min.bucket" in actions.column_names else [None] * len(paths)
    hi = actions.column("max.bucket").to_pylist() if "max.bucket" in actions.column_names else [None] * len(paths)
    reason, files, rows = None, {}, {}
    if buckets is None:
        reason = f"partition {ds} has no recorded bucket count (written before buckets)"
    elif any(a is None or b is None for a, b in zip(lo, hi)):
        reason = f"partition {ds} has files without bucket statistics"
    elif any(a != b for a, b in zip(lo, hi)):
        reason = f"partition {ds} has files holding several buckets (rewritten by a compaction?)"
    elif len(set(lo)) != len(lo) or not all(0 <= b < buckets for b in lo):
        reason = f"partition {ds} files do not map one to one onto buckets 0..{buckets - 1}"
    else:
        files = dict(zip((int(b) for b in lo), paths))
        rows = dict(zip((int(b) for b in lo), (int(n) for n in actions.column("num_records").to_pylist())))
    return BucketLayout(ds=ds, version=version, buckets=buckets, files=files, rows=rows, paths=paths, reason=reason)


def _file_batches(wh: TableStore, rel: str, *, ds: str, bucket: int, buckets: int, columns: Sequence[str],
                  batch_rows: int, dictionary: bool) -> Iterator[pa.RecordBatch]:
    """The rows of one bucket's file in batches, row group by row group (each group has its own ``conditions``
    dictionary, and Arrow cannot hand back a list of dictionaries that changes mid-batch); refuses rows of another
    bucket or out of user_id order."""
    fs, root = filesystem_for(wh.table_uri(TABLE))
    with fs.open_input_file(f"{root}/{unquote(rel)}") as handle:
        pf = open_parquet(handle, dictionary=dictionary)
        names = [c for c in columns if c != "ds"]
        wanted = list(dict.fromkeys([*names, "user_id"]))
        last = None
        for batch in (b for group in range(pf.num_row_groups)
                      for b in pf.iter_batches(batch_size=batch_rows, columns=wanted, row_groups=[group])):
            uids = batch.column("user_id").to_numpy(zero_copy_only=False)
            what = misplaced(uids, bucket=bucket, buckets=buckets, after=last)
            if what:
                raise ValueError(f"{TABLE} ds={ds} file {rel}: bucket {bucket} holds {what}")
            if len(uids):
                last = uids[-1]
            yield _shaped(batch, columns, ds)


def misplaced(uids: np.ndarray, *, bucket: int, buckets: int, after: int | None) -> str | None:
    """What is wrong with ``uids`` as the next rows of ``bucket`` after user ``after`` (None: the first rows): a
    user of another bucket, or rows out of strict user_id order; None when nothing is."""
    bad = np.flatnonzero(bucket_of(uids, buckets) != bucket)
    if len(bad):
        return f"user {int(uids[bad[0]])} of another bucket"
    if np.any(np.diff(uids) <= 0) or (after is not None and len(uids) and uids[0] <= after):
        return "rows out of user_id order"
    return None


def open_parquet(handle, *, dictionary: bool) -> pq.ParquetFile:
    """A ``ParquetFile`` reading ``conditions`` as dictionary strings when ``dictionary`` (the leaf's path
    from the footer: writers name the list element differently). Column chunks are read ``READ_BUFFER`` bytes at a
    time, not whole: a merge keeps one reader per bucket open."""
    pf = pq.ParquetFile(handle, pre_buffer=False, buffer_size=READ_BUFFER)
    if not dictionary:
        return pf
    leaves = [pf.schema.column(i).path for i in range(pf.metadata.num_columns)]
    leaf = [p for p in leaves if p.startswith(f"{DICTIONARY_COLUMN}.")]
    return pq.ParquetFile(handle, pre_buffer=False, buffer_size=READ_BUFFER, read_dictionary=leaf) if leaf else pf


def _shaped(batch: pa.RecordBatch, columns: Sequence[str], ds: str | None = None) -> pa.RecordBatch:
    """``batch`` with exactly ``columns`` in that order (``ds`` filled when asked for)."""
    arrays = []
    for c in columns:
        if c == "ds" and c not in batch.schema.names:
            arrays.append(pa.array([ds] * batch.num_rows, pa.string()))
        else:
            arrays.append(batch.column(c))
    return pa.RecordBatch.from_arrays(arrays, names=list(columns))


def _dictionary_conditions(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``conditions`` (list<string>) as list<dictionary<int32, string>>, as the bucketed read returns it."""
    if DICTIONARY_COLUMN not in batch.schema.names:
        return batch
    i = batch.schema.get_field_index(DICTIONARY_COLUMN)
    col = batch.column(i)
    if not pa.types.is_list(col.type) or pa.types.is_dictionary(col.type.value_type):
        return batch
    values = pc.dictionary_encode(col.values)
    encoded = pa.ListArray.from_arrays(col.offsets, values, mask=col.is_null())
    return batch.set_column(i, DICTIONARY_COLUMN, encoded)


def _check_worker(index: int, count: int, batch_rows: int) -> None:
    if not (isinstance(count, int) and isinstance(index, int) and 0 <= index < count):
        raise ValueError(f"bucket reader: need 0 <= index < count, got index={index!r} count={count!r}")
    if batch_rows < 1:
        raise ValueError(f"bucket reader: batch_rows must be >= 1, got {batch_rows}")


def bucket_streams(wh: TableStore, lay: BucketLayout, *, index: int, count: int, columns: Sequence[str],
                   batch_rows: int, dictionary: bool = True) -> list[tuple[int, Iterator[pa.RecordBatch]]]:
    """(bucket, lazy batch stream) of every non-empty bucket of worker ``index`` of ``count``, in bucket order;
    a file is opened when its stream is first read. Requires ``lay.unusable(count)`` to be None."""
    _check_worker(index, count, batch_rows)
    reason = lay.unusable(count)
    if reason:
        raise ValueError(f"{TABLE} ds={lay.ds}: no bucketed read: {reason}")
    mine = [b for b in range(lay.buckets) if b % count == index and b in lay.files]
    return [(b, _file_batches(wh, lay.files[b], ds=lay.ds, bucket=b, buckets=lay.buckets, columns=columns,
                              batch_rows=batch_rows, dictionary=dictionary)) for b in mine]


def filtered_batches(wh: TableStore, lay: BucketLayout, *, index: int, count: int, columns: Sequence[str],
                     batch_rows: int, dictionary: bool = True) -> Iterator[pa.RecordBatch]:
    """The fallback: every file of the partition, rows with ``shard_of(user_id, count) == index``, file order."""
    _check_worker(index, count, batch_rows)
    dataset = pyarrow_dataset(wh.delta_table(TABLE, lay.version), [("ds", "=", lay.ds)])
    names = [c for c in columns if c != "ds"]
    for batch in dataset.to_batches(columns=list(dict.fromkeys([*names, "user_id"])), batch_size=batch_rows):
        if count > 1:
            keep = shard_of(batch.column("user_id").to_numpy(zero_copy_only=False), count) == index
            batch = batch.filter(pa.array(keep))
        if batch.num_rows:
            batch = _shaped(batch, columns, lay.ds)
            yield _dictionary_conditions(batch) if dictionary else batch


def iter_bucket_batches(wh: TableStore, ds: str, *, index: int, count: int, columns: Sequence[str],
                        batch_rows: int, version: int | None = None,
                        dictionary: bool = True) -> Iterator[pa.RecordBatch]:
    """Worker ``index`` of ``count``'s rows of partition ``ds`` (``columns``, in that order), batches of at most
    ``batch_rows`` rows in (bucket, user_id) order, opening only its buckets' files; the fallback (logged)
    reads every file and filters (file order). ``version``: a pinned snapshot (default latest)."""
    _check_worker(index, count, batch_rows)
    lay = layout(wh, ds, version=version)
    reason = lay.unusable(count)
    if reason:
        log.info("%s ds=%s worker %d/%d: reading every file and filtering: %s", TABLE, ds, index, count, reason)
        yield from filtered_batches(wh, lay, index=index, count=count, columns=columns, batch_rows=batch_rows,
                                    dictionary=dictionary)
        return
    for _, stream in bucket_streams(wh, lay, index=index, count=count, columns=columns, batch_rows=batch_rows,
                                    dictionary=dictionary):
        yield from stream


def merged_by_user(streams: Sequence[Iterator[pa.RecordBatch]], rows: int) -> Iterator[pa.Table]:
    """Tables of ``rows`` rows (the last fewer) in user_id order from ``streams``, each already in user_id order
    (disjoint users). Each round takes, from every stream's buffered batch, the rows up to the smallest buffered
    maximum among streams not yet exhausted, so memory is one batch per stream plus one output table."""
    live = list(streams)
    buffers: list[pa.Table | None] = [None] * len(live)
    pending: list[pa.Table] = []
    pending_rows = 0
    while True:
        for i, stream in enumerate(live):
            while stream is not None and (buffers[i] is None or buffers[i].num_rows == 0):
                batch = next(stream, None)
                if batch is None:
                    live[i] = stream = None
                else:
                    buffers[i] = pa.Table.from_batches([batch])
        held = [i for i, b in enumerate(buffers) if b is not None and b.num_rows]
        if not held:
            break
        tops = [buffers[i].column("user_id")[-1].as_py() for i in held if live[i] is not None]
        cutoff = min(tops) if tops else None
        parts = []
        for i in held:
            uids = buffers[i].column("user_id").to_numpy()
            n = len(uids) if cutoff is None else int(np.searchsorted(uids, cutoff, side="right"))
            parts.append(buffers[i].slice(0, n))
            buffers[i] = buffers[i].slice(n)
        part = pa.concat_tables(parts)
        part = part.take(pc.sort_indices(part.column("user_id")))
        pending.append(part)
        pending_rows += part.num_rows
        while pending_rows >= rows:
            table = pa.concat_tables(pending)
            yield table.slice(0, rows)
            rest = table.slice(rows)
            pending, pending_rows = [rest], rest.num_rows
    if pending_rows:
        yield pa.concat_tables(pending)
