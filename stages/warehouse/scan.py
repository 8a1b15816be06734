"""Point reads of a few ``user_id`` values from one partition of a Delta snapshot, touching little data.

Local tables: the log's per-file ``user_id`` min/max picks the files of partition ``ds`` (from the add actions
the caller already read, if it passes them: the log is listed once per lookup), the parquet footers pick the
row groups, and the ``user_id`` column is read before the other columns (infer writes sorted files, so a user
is about one row group). The snapshot's add actions cover every day; delta-rs' filtered file listing
(``file_uris`` with a ``ds`` predicate) costs more than exporting them all and filtering in Arrow. Other URIs use delta-rs' pyarrow dataset with the same filter: correct,
but it opens more footers. Returns the matching rows with ``ds`` restored, in the files' column types
(callers cast them with ``stages.warehouse.reads.restore_types``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

KEY = "user_id"


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


def _read_file(path: str, ids: np.ndarray, id_array: pa.Array) -> pa.Table | None:
    pf = pq.ParquetFile(path)
    meta = pf.metadata
    col = pf.schema_arrow.get_field_index(KEY)
    groups = []
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(col).statistics
        if stats is None or not stats.has_min_max or np.searchsorted(ids, stats.min, "left") < np.searchsorted(ids, stats.max, "right"):
            groups.append(i)
    parts = []
    for i in groups:
        keys = pf.read_row_group(i, columns=[KEY]).column(KEY)
        mask = pc.is_in(keys, value_set=id_array)
        if pc.any(mask).as_py():
            parts.append(pf.read_row_group(i).filter(mask))
    return pa.concat_tables(parts) if parts else None


def read_users(delta: Any, ds: str, user_ids: Sequence[int], extra_filter: Any = None, *,
               actions: pa.Table | None = None) -> pa.Table:
    """Rows of partition ``ds`` with ``user_id`` in ``user_ids`` (and ``extra_filter``), ``ds`` restored.

    ``actions``: ``add_actions(delta)`` when the caller already has them (else they are read here).
    """
    ids = np.unique(np.asarray(user_ids, dtype=np.int64))
    id_array = pa.array(ids, pa.int64())
    root = _local_root(delta)
    if root is None:
        dataset = delta.to_pyarrow_dataset(file_pruning_predicate=[("ds", "=", ds)])
        expr = pc.field(KEY).isin(id_array)
        return dataset.to_table(filter=expr if extra_filter is None else expr & extra_filter)
    schema = pa.schema(delta.schema().to_arrow())  # the table's columns, ds included, in table order
    parts = []
    for rel in _candidate_files(add_actions(delta) if actions is None else actions, ds, ids):
        table = _read_file(os.path.join(root, unquote(rel)), ids, id_array)
        if table is not None:
            parts.append(table)
    if parts:
        data = pa.concat_tables(parts, promote_options="permissive")
    else:
        data = schema.remove(schema.get_field_index("ds")).empty_table()
    if extra_filter is not None:
        data = data.filter(extra_filter)
    data = data.append_column("ds", pa.array([ds] * data.num_rows, pa.string()))
    return data.select([name for name in schema.names if name in data.column_names])
