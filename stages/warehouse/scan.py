"""Point reads of a few ``user_id`` values from one partition of a Delta snapshot, touching little data.

Local tables: the log's per-file ``user_id`` min/max picks the files of partition ``ds`` (from the add actions
the caller already read, if it passes them: the log is listed once per lookup), the parquet footers pick the
row groups, and the ``user_id`` column is read before the other columns (infer writes sorted files, so a user
is about one row group); a batch of many users decodes the groups with a hit in calls of ``GROUPS_PER_READ``
groups, one thread per core. The snapshot's add actions cover every day; delta-rs' filtered file listing
(``file_uris`` with a ``ds`` predicate) costs more than exporting them all and filtering in Arrow. Other URIs use delta-rs' pyarrow dataset with the same filter: correct,
but it opens more footers. Returns the matching rows with ``ds`` restored, in the files' column types
(callers cast them with ``stages.warehouse.reads.restore_types``).
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
GROUPS_PER_READ = 16  # row groups decoded by one call (a batch's reads run on one thread per core)


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


def _candidate_files(actions: pa.Table, ds: str, ids: np.ndarray) -> list[str]:
    """Relative paths of partition-``ds`` files whose user_id [min, max] contains one of ``ids`` (sorted)."""
    actions = actions.filter(pc.equal(actions.column("partition.ds"), ds))
    paths = actions.column("path").to_pylist()
    if f"min.{KEY}" not in actions.column_names or not paths:
        return paths  # no statistics in the log: every file of the partition is a candidate
    lo, hi = actions.column(f"min.{KEY}"), actions.column(f"max.{KEY}")
    unknown = pc.or_(lo.is_null(), hi.is_null()).to_numpy(zero_copy_only=False)
    lo_v = pc.fill_null(lo, 0).to_numpy(zero_copy_only=False)
    hi_v = pc.fill_null(hi, 0).to_numpy(zero_copy_only=False)
    # some id falls inside [lo, hi] (or the file has no statistics)
    keep = unknown | (np.searchsorted(ids, lo_v, "left") < np.searchsorted(ids, hi_v, "right"))
    return [path for path, k in zip(paths, keep) if k]


def _member(ids: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Boolean mask of ``keys`` that are in ``ids`` (sorted, unique): one binary search per key."""
    at = np.minimum(np.searchsorted(ids, keys), len(ids) - 1)
    return ids[at] == keys


def _plan_file(path: str, ids: np.ndarray) -> list[tuple[str, list[int], np.ndarray]]:
    """Reads of one parquet file for ``ids``: (path, row groups, row mask) per ``GROUPS_PER_READ`` groups with a
    hit. The footer's row-group ranges pick the groups; only their ``user_id`` column is read here."""
    pf = pq.ParquetFile(path)
    meta = pf.metadata
    col = pf.schema_arrow.get_field_index(KEY)
    groups = []
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(col).statistics
        if stats is None or not stats.has_min_max or np.searchsorted(ids, stats.min, "left") < np.searchsorted(ids, stats.max, "right"):
            groups.append(i)
    if not groups:
        return []
    keys = pf.read_row_groups(groups, columns=[KEY]).column(KEY).to_numpy()
    hit = _member(ids, keys)
    sizes = np.array([meta.row_group(i).num_rows for i in groups])
    of_group = np.repeat(np.arange(len(groups)), sizes)  # the position in ``groups`` of every key read
    chosen = np.flatnonzero(np.bincount(of_group[hit], minlength=len(groups)))
    reads = []
    for start in range(0, len(chosen), GROUPS_PER_READ):
        part = chosen[start:start + GROUPS_PER_READ]
        reads.append((path, [groups[i] for i in part], hit[np.isin(of_group, part)]))
    return reads


def _read(job: tuple[str, list[int], np.ndarray]) -> pa.Table:
    path, groups, mask = job
    table = pq.ParquetFile(path).read_row_groups(groups, use_threads=False)
    return table if mask.all() else table.filter(pa.array(mask))


def read_users(delta: Any, ds: str, user_ids: Sequence[int], extra_filter: Any = None, *,
               actions: pa.Table | None = None) -> pa.Table:
    """Rows of partition ``ds`` with ``user_id`` in ``user_ids`` (and ``extra_filter``), ``ds`` restored.

    ``actions``: ``add_actions(delta)`` when the caller already has them (else they are read here).
    """
    ids = np.unique(np.asarray(user_ids, dtype=np.int64))
    root = _local_root(delta)
    if root is None:
        dataset = delta.to_pyarrow_dataset(file_pruning_predicate=[("ds", "=", ds)])
        expr = pc.field(KEY).isin(pa.array(ids, pa.int64()))
        return dataset.to_table(filter=expr if extra_filter is None else expr & extra_filter)
    schema = pa.schema(delta.schema().to_arrow())  # the table's columns, ds included, in table order
    files = _candidate_files(add_actions(delta) if actions is None else actions, ds, ids) if len(ids) else []
    jobs = [job for rel in files for job in _plan_file(os.path.join(root, unquote(rel)), ids)]
    if len(jobs) > 1:  # decoding releases the GIL: one thread per core
        with ThreadPoolExecutor(min(len(jobs), os.cpu_count() or 1)) as pool:
            parts = list(pool.map(_read, jobs))
    else:
        parts = [_read(job) for job in jobs]
    if parts:
        data = pa.concat_tables(parts, promote_options="permissive")
    else:
        data = schema.remove(schema.get_field_index("ds")).empty_table()
    if extra_filter is not None:
        data = data.filter(extra_filter)
    data = data.append_column("ds", pa.repeat(pa.scalar(ds, pa.string()), data.num_rows))
    return data.select([name for name in schema.names if name in data.column_names])
