"""The batch lookup's previous path, the baseline ``lum bench query`` times ``query_many`` against.

Rebuilt from ``query_many`` and ``stages.warehouse.scan.read_users`` before the batch rewrite, for a local
``user_knowledge`` table, one day, all conditions: the ids deduplicated by ``np.unique`` twice; every candidate
file's row groups tested by one Python call per group, and the ``user_id`` column of all overlapping groups read
and tested in the calling thread before any read starts; reads of up to ``GROUPS_PER_READ`` groups with a hit on
one thread per core, each decoding every column again (strings as strings) and picking its rows with an
``np.isin`` over the whole file's keys; an ``np.diff`` order check. Same rows in the same order as
``query_many`` (the bench checks it).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stages.query.lookup import _user_id_array
from stages.warehouse.facade import Warehouse
from stages.warehouse.reads import restore_types
from stages.warehouse.scan import add_actions

TABLE = "user_knowledge"
KEY = "user_id"
GROUPS_PER_READ = 16


def _candidate_files(actions: pa.Table, ds: str, ids: np.ndarray) -> list[str]:
    actions = actions.filter(pc.equal(actions.column("partition.ds"), ds))
    paths = actions.column("path").to_pylist()
    lo = pc.fill_null(actions.column(f"min.{KEY}"), 0).to_numpy(zero_copy_only=False)
    hi = pc.fill_null(actions.column(f"max.{KEY}"), 0).to_numpy(zero_copy_only=False)
    unknown = pc.or_(actions.column(f"min.{KEY}").is_null(), actions.column(f"max.{KEY}").is_null())
    keep = unknown.to_numpy(zero_copy_only=False) | (np.searchsorted(ids, lo, "left") < np.searchsorted(ids, hi, "right"))
    return [path for path, k in zip(paths, keep) if k]


def _plan_file(path: str, ids: np.ndarray) -> list[tuple[str, list[int], np.ndarray]]:
    pf = pq.ParquetFile(path)
    meta = pf.metadata
    col = pf.schema_arrow.get_field_index(KEY)
    groups = []
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(col).statistics
        if stats is None or not stats.has_min_max or \
                np.searchsorted(ids, stats.min, "left") < np.searchsorted(ids, stats.max, "right"):
            groups.append(i)
    if not groups:
        return []
    keys = pf.read_row_groups(groups, columns=[KEY]).column(KEY).to_numpy()
    hit = ids[np.minimum(np.searchsorted(ids, keys), len(ids) - 1)] == keys
    sizes = np.array([meta.row_group(i).num_rows for i in groups])
    of_group = np.repeat(np.arange(len(groups)), sizes)
    chosen = np.flatnonzero(np.bincount(of_group[hit], minlength=len(groups)))
    return [(path, [groups[i] for i in chosen[s:s + GROUPS_PER_READ]],
             hit[np.isin(of_group, chosen[s:s + GROUPS_PER_READ])]) for s in range(0, len(chosen), GROUPS_PER_READ)]


def _read(job: tuple[str, list[int], np.ndarray]) -> pa.Table:
    path, groups, mask = job
    table = pq.ParquetFile(path).read_row_groups(groups, use_threads=False)
    return table if mask.all() else table.filter(pa.array(mask))


def query_many_baseline(warehouse: Warehouse | str, user_ids: Any, *, ds: str) -> pa.Table:
    """``query_many(warehouse, user_ids, ds=ds)`` of ``user_knowledge`` by the previous path."""
    delta = Warehouse.of(warehouse).delta_table(TABLE)
    root = unquote(delta.table_uri.removeprefix("file://"))
    ids = np.unique(np.unique(_user_id_array(user_ids)))  # twice, as the old query_many and read_users did
    actions = add_actions(delta)
    jobs = [job for rel in _candidate_files(actions, ds, ids) for job in _plan_file(os.path.join(root, unquote(rel)), ids)]
    with ThreadPoolExecutor(max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        parts = list(pool.map(_read, jobs))
    schema = pa.schema(delta.schema().to_arrow())
    data = pa.concat_tables(parts, promote_options="permissive") if parts else \
        schema.remove(schema.get_field_index("ds")).empty_table()
    data = data.append_column("ds", pa.repeat(pa.scalar(ds, pa.string()), data.num_rows))
    out = restore_types(TABLE, data.select([name for name in schema.names if name in data.column_names]))
    users = out.column(KEY).to_numpy()
    if len(users) > 1 and (np.diff(users) < 0).any():
        out = out.take(pa.array(np.argsort(users, kind="stable")))
    return out
