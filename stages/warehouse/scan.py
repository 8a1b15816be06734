"""Point reads of some ``user_id`` values (one, or a batch of millions) from one partition of a Delta snapshot.

Local tables: the log's per-file ``user_id`` min/max picks the files of partition ``ds`` (from the add actions
the caller already read, if it passes them: the log is listed once per lookup), the parquet footers' row-group
min/max pick the row groups (both one vectorised binary search over the sorted ids), and each read job (up to
``GROUPS_PER_READ`` groups of one file, one thread per core: decoding releases the GIL) decodes the ``user_id``
column first, tests membership with a bitmap over the ids' range (a binary search when the ids are sparse), and
decodes the other columns only for the groups with a hit, the low-cardinality strings named by the caller as
dictionaries (cast back after the row filter, so only the kept rows become strings). No Python work per user or
per row. Files are read in the order of their minimum ``user_id``: a partition sorted by ``user_id`` (what the
maintain stage writes) comes back sorted. The snapshot's add actions cover every day; delta-rs' filtered file
listing (``file_uris`` with a ``ds`` predicate) costs more than exporting them all and filtering in Arrow. Other
URIs use delta-rs' pyarrow dataset with the same filter: correct, but it opens more footers. Returns the matching
rows with ``ds`` restored, in the files' column types (callers cast them with
``stages.warehouse.reads.restore_types``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

KEY = "user_id"
GROUPS_PER_READ = 64  # row groups decoded by one job: few big buffers (cheaper to allocate and keep than many)
BITMAP_SPAN_PER_ID = 64  # membership by bitmap when the ids' [min, max] spans at most this many values per id
BITMAP_MAX_BYTES = 1 << 27  # ... and the bitmap (one byte per value of the span) stays this small


def _local_root(delta: Any) -> str | None:
    uri = delta.table_uri
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return unquote(parsed.path) if parsed.scheme else uri
    return None


def add_actions(delta: Any) -> pa.Table:
    """The snapshot's add actions, flattened (``path``, ``partition.ds``, ``min.user_id``, ...): one call, reused
    by the caller for the partition list and by ``read_users`` for the files."""
    return pa.table(delta.get_add_actions(flatten=True))


def unique_ids(user_ids: Any) -> np.ndarray:
    """Sorted distinct int64 ids (a sort: cheaper than a hash for big batches; already sorted input is kept)."""
    ids = np.asarray(user_ids, dtype=np.int64)
    if len(ids) > 1 and not (ids[1:] > ids[:-1]).all():
        ids = np.sort(ids)
        ids = ids[np.concatenate(([True], ids[1:] != ids[:-1]))]
    return ids


class IdSet:
    """Sorted distinct ids with vectorised tests: which keys are ids (``member``), which [lo, hi] hold one."""

    def __init__(self, ids: np.ndarray):
        self.ids = ids
        self.lo = int(ids[0]) if len(ids) else 0
        span = int(ids[-1]) - self.lo + 1 if len(ids) else 0
        self.bitmap = None
        if 0 < span <= min(BITMAP_SPAN_PER_ID * len(ids), BITMAP_MAX_BYTES):
            self.bitmap = np.zeros(span, bool)
            self.bitmap[ids - self.lo] = True

    def member(self, keys: np.ndarray) -> np.ndarray:
        """Boolean mask of ``keys`` (int64) that are ids."""
        if not len(self.ids):
            return np.zeros(len(keys), bool)
        if self.bitmap is None:
            at = np.minimum(np.searchsorted(self.ids, keys), len(self.ids) - 1)
            return self.ids[at] == keys
        rel = keys - self.lo  # wraps for far-away keys; as unsigned those are past the span
        inside = rel.view(np.uint64) < len(self.bitmap)
        return self.bitmap[np.where(inside, rel, 0)] & inside

    def overlaps(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Per range: some id falls inside [lo, hi] (bounds inclusive)."""
        return np.searchsorted(self.ids, lo, "left") < np.searchsorted(self.ids, hi, "right")


def _candidate_files(actions: pa.Table, ds: str, ids: np.ndarray) -> list[str]:
    """Relative paths of partition-``ds`` files whose user_id [min, max] contains one of ``ids`` (sorted), by
    their minimum ``user_id`` (files without statistics last)."""
    actions = actions.filter(pc.equal(actions.column("partition.ds"), ds))
    paths = actions.column("path").to_pylist()
    if f"min.{KEY}" not in actions.column_names or not paths:
        return paths  # no statistics in the log: every file of the partition is a candidate
    lo, hi = actions.column(f"min.{KEY}"), actions.column(f"max.{KEY}")
    unknown = pc.or_(lo.is_null(), hi.is_null()).to_numpy(zero_copy_only=False)
    lo_v = pc.fill_null(lo, 0).to_numpy(zero_copy_only=False)
    hi_v = pc.fill_null(hi, 0).to_numpy(zero_copy_only=False)
    keep = unknown | IdSet(ids).overlaps(lo_v, hi_v)  # some id inside [lo, hi], or no statistics
    order = np.lexsort((lo_v, unknown))
    return [paths[i] for i in order if keep[i]]


def _key_leaf(meta: pq.FileMetaData) -> int | None:
    """The parquet column index of ``KEY`` (None when the file has no such column or no row group)."""
    if meta.num_row_groups == 0:
        return None
    group = meta.row_group(0)
    return next((j for j in range(group.num_columns) if group.column(j).path_in_schema == KEY), None)


Job = tuple[str, pq.FileMetaData, list[int], list[str]]  # path, footer, row groups, columns read as dictionaries


def _file_jobs(path: str, ids: IdSet, dictionary: Sequence[str]) -> list[Job]:
    """Read jobs of one parquet file: its non-empty row groups whose ``user_id`` [min, max] (footer statistics;
    none: kept) can hold an id, ``GROUPS_PER_READ`` to a job."""
    meta = pq.ParquetFile(path).metadata
    leaf = _key_leaf(meta)
    n = meta.num_row_groups
    lo, hi = np.zeros(n, np.int64), np.zeros(n, np.int64)
    known, rows = np.zeros(n, bool), np.zeros(n, np.int64)
    for i in range(n):
        group = meta.row_group(i)
        rows[i] = group.num_rows
        stats = group.column(leaf).statistics if leaf is not None else None
        if stats is not None and stats.has_min_max:
            known[i], lo[i], hi[i] = True, stats.min, stats.max
    groups = np.flatnonzero((rows > 0) & (~known | ids.overlaps(lo, hi))).tolist()
    names = meta.schema.to_arrow_schema().names if groups and dictionary else []
    as_dict = [name for name in dictionary if name in names]
    return [(path, meta, groups[s:s + GROUPS_PER_READ], as_dict) for s in range(0, len(groups), GROUPS_PER_READ)]


def _read_job(job: Job, ids: IdSet) -> pa.Table | None:
    """The rows of ``ids`` in a job's row groups (None: no hit): keys first, then the groups with a hit."""
    path, meta, groups, as_dict = job
    pf = pq.ParquetFile(path, metadata=meta, read_dictionary=as_dict or None)
    hit = ids.member(pf.read_row_groups(groups, columns=[KEY], use_threads=False).column(KEY).to_numpy())
    sizes = np.array([meta.row_group(g).num_rows for g in groups])
    keep = np.logical_or.reduceat(hit, np.concatenate(([0], np.cumsum(sizes)[:-1])))
    if not keep.any():
        return None
    table = pf.read_row_groups([g for g, k in zip(groups, keep) if k], use_threads=False)
    mask = hit[np.repeat(keep, sizes)]
    if not mask.all():
        table = table.filter(pa.array(mask))
    for name in as_dict:  # back to the file's string type, for the kept rows only
        i = table.schema.get_field_index(name)
        field = table.schema.field(i)
        if pa.types.is_dictionary(field.type):
            table = table.set_column(i, field.with_type(field.type.value_type), table.column(i).cast(field.type.value_type))
    return table


def _empty_of_partition(actions: pa.Table, ds: str, root: str) -> pa.Table | None:
    """An empty table with the columns of partition ``ds``'s first file, vectors as fixed-size lists of the width
    its first row has (a list's width is in the rows, not the schema); None without a file or a row."""
    paths = actions.filter(pc.equal(actions.column("partition.ds"), ds)).column("path")
    if len(paths) == 0:
        return None
    first = next(pq.ParquetFile(os.path.join(root, unquote(paths[0].as_py()))).iter_batches(batch_size=1), None)
    if first is None:
        return None
    table = pa.Table.from_batches([first])
    for i, field in enumerate(table.schema):  # a vector column: its width from the row, as a fixed-size list
        if pa.types.is_list(field.type) and pa.types.is_floating(field.type.value_type) and table.column(i)[0].is_valid:
            fixed = pa.list_(field.type.value_field, len(table.column(i)[0]))
            table = table.set_column(i, field.with_type(fixed), table.column(i).cast(fixed))
    return table.drop_columns([c for c in ("ds",) if c in table.column_names]).slice(0, 0)


def read_users(delta: Any, ds: str, user_ids: Sequence[int], extra_filter: Any = None, *,
               actions: pa.Table | None = None, dictionary: Sequence[str] = ()) -> pa.Table:
    """Rows of partition ``ds`` with ``user_id`` in ``user_ids`` (and ``extra_filter``), ``ds`` restored.

    ``actions``: ``add_actions(delta)`` when the caller already has them (else they are read here).
    ``dictionary``: string columns of few distinct values, decoded as dictionaries (a speed hint only).
    """
    ids = unique_ids(user_ids)
    root = _local_root(delta)
    if root is None:
        dataset = delta.to_pyarrow_dataset(file_pruning_predicate=[("ds", "=", ds)])
        expr = pc.field(KEY).isin(pa.array(ids, pa.int64()))
        return dataset.to_table(filter=expr if extra_filter is None else expr & extra_filter)
    schema = pa.schema(delta.schema().to_arrow())  # the table's columns, ds included, in table order
    id_set = IdSet(ids)
    actions = add_actions(delta) if actions is None else actions
    files = _candidate_files(actions, ds, ids) if len(ids) else []
    jobs = [job for rel in files for job in _file_jobs(os.path.join(root, unquote(rel)), id_set, dictionary)]
    if len(jobs) > 1:  # decoding releases the GIL: one thread per core
        with ThreadPoolExecutor(min(len(jobs), os.cpu_count() or 1)) as pool:
            parts = list(pool.map(lambda job: _read_job(job, id_set), jobs))
    else:
        parts = [_read_job(job, id_set) for job in jobs]
    parts = [part for part in parts if part is not None]
    if parts:
        data = pa.concat_tables(parts, promote_options="permissive")
    else:  # no row: the columns of a file of the day (the embedding's width D is in the files, not the log)
        data = _empty_of_partition(actions, ds, root)
        if data is None:
            data = schema.remove(schema.get_field_index("ds")).empty_table()
    if extra_filter is not None:
        data = data.filter(extra_filter)
    data = data.append_column("ds", pa.repeat(pa.scalar(ds, pa.string()), data.num_rows))
    return data.select([name for name in schema.names if name in data.column_names])
