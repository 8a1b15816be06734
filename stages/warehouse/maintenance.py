"""Keeping tables tidy without changing a row: rewrite one partition's files, expire partitions, vacuum, checkpoint.

- ``layout``: a partition's files, bytes, rows and whether its files' ``user_id`` ranges are disjoint (the log only).
- ``optimize``: ONE commit rewriting partition ``ds`` (``dataChange=false``): delta-rs compaction of its small files,
  or with ``cluster_by`` an external sort by that column then the table's key (``stages.warehouse.rangesort``,
  memory bounded by ``sort_bytes``), which also compacts; skipped when the layout is already what it would
  write, so a rerun commits nothing. Parquet row groups of ``row_group_rows``,
  ``compression`` (zstd by default), small dictionary pages (``DICTIONARY_PAGE_BYTES``).
- ``expire``: ONE delete commit of whole partitions (metadata only, no file rewritten).
- ``vacuum``: delta-rs ``vacuum(full=True)`` after a dry run; nothing to delete means no commit.
- ``checkpoint``: a checkpoint of the latest version, then log entries older than the log retention removed.
Limits: compaction interleaves its input files' rows; clustering rewrites the whole partition (time and temporary
disk grow with it, memory does not).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
from deltalake import WriterProperties

import schemas
from stages.core.dates import check_ds
from stages.warehouse.commit import filesystem_for
from stages.warehouse.rangesort import cluster_partition
from stages.warehouse.store import TableStore

log = logging.getLogger(__name__)

FILES_PER_TARGET = 2  # a clustered partition is rewritten when it has more than this many files per target size
# Dictionary pages stop at this size: low-cardinality columns (conditions, model versions) keep their dictionary,
# float embeddings fall back to plain pages at once (a dictionary of random floats is bigger and slower to decode).
DICTIONARY_PAGE_BYTES = 4096


@dataclass(frozen=True)
class Layout:
    """Partition ``ds`` of a table as its log describes it."""

    files: int
    bytes: int
    rows: int
    disjoint: bool  # files' [min, max] of the clustering column do not overlap (True with <= 1 file)

    def needs_clustering(self, target_size: int) -> bool:
        """Overlapping files, or more than ``FILES_PER_TARGET`` files per ``target_size`` bytes (small files)."""
        wanted = max(1, math.ceil(self.bytes / target_size))
        return self.files > 1 and (not self.disjoint or self.files > FILES_PER_TARGET * wanted)


def layout(store: TableStore, name: str, ds: str, *, column: str = "user_id") -> Layout:
    """``Layout`` of partition ``ds`` (zeros when it has no files); files without statistics count as overlapping."""
    actions = pa.table(store.delta_table(name).get_add_actions(flatten=True))
    if "partition.ds" not in actions.column_names:
        raise ValueError(f"table {name} is not partitioned by ds")
    part = actions.filter(pc.equal(actions.column("partition.ds"), check_ds(ds)))
    rows = int(pc.sum(part.column("num_records")).as_py() or 0) if part.num_rows else 0
    size = int(pc.sum(part.column("size_bytes")).as_py() or 0) if part.num_rows else 0
    disjoint = part.num_rows <= 1
    if not disjoint and f"min.{column}" in part.column_names:
        lo, hi = part.column(f"min.{column}"), part.column(f"max.{column}")
        if lo.null_count == 0 and hi.null_count == 0:
            order = np.argsort(lo.to_numpy(zero_copy_only=False), kind="stable")
            lo_v, hi_v = lo.to_numpy(zero_copy_only=False)[order], hi.to_numpy(zero_copy_only=False)[order]
            disjoint = bool((hi_v[:-1] < lo_v[1:]).all())
    return Layout(files=part.num_rows, bytes=size, rows=rows, disjoint=disjoint)


def optimize(store: TableStore, name: str, *, ds: str, cluster_by: str | None, target_size: int,
             row_group_rows: int, compression: str = "ZSTD", sort_bytes: int = 256 << 20,
             spill_codec: str = "lz4") -> dict[str, Any]:
    """Rewrite partition ``ds`` in at most ONE commit; returns files before/after, rows and ``rewrite``
    (``"cluster"``, ``"compact"`` or ``"none"``; a clustering also ``spill_mb``, its largest spill on disk).
    ``RuntimeError`` if the row count changed (never expected) or, when clustering, if the partition changed
    while it was sorted (nothing committed then)."""
    if target_size < 1 or row_group_rows < 1 or sort_bytes < 1:
        raise ValueError(f"target_size, row_group_rows and sort_bytes must be >= 1, got {target_size}, "
                         f"{row_group_rows}, {sort_bytes}")
    before = layout(store, name, ds, column=cluster_by or "user_id")
    out = {"files_before": before.files, "files_after": before.files, "rows": before.rows, "rewrite": "none"}
    if before.files == 0:
        return out
    table = store.delta_table(name)
    props = WriterProperties(compression=compression, max_row_group_size=row_group_rows,
                             dictionary_page_size_limit=DICTIONARY_PAGE_BYTES)
    filters = [("ds", "=", ds)]
    if cluster_by is not None:
        if not before.needs_clustering(target_size):
            return out
        key = schemas.get(name).KEY if name in schemas.TABLES else (cluster_by,)
        sorted_out = cluster_partition(store, name, ds=ds, column=cluster_by, key=key, target_size=target_size,
                                       row_group_rows=row_group_rows, compression=compression, sort_bytes=sort_bytes,
                                       dictionary_page_bytes=DICTIONARY_PAGE_BYTES, spill_codec=spill_codec)
        out["rewrite"], out["spill_mb"] = "cluster", round(sorted_out["spill_bytes"] / 2**20, 1)
    else:
        metrics = table.optimize.compact(partition_filters=filters, target_size=target_size, writer_properties=props)
        if metrics.get("numFilesRemoved", 0):
            out["rewrite"] = "compact"
    after = layout(store, name, ds, column=cluster_by or "user_id")
    if after.rows != before.rows:
        raise RuntimeError(f"table {name} ds={ds}: {out['rewrite']} left {after.rows} rows of {before.rows}")
    out["files_after"] = after.files
    log.info("%s ds=%s: %s, %d -> %d files, %d rows", name, ds, out["rewrite"], before.files, after.files, after.rows)
    return out


def expire(store: TableStore, name: str, days: list[str]) -> list[str]:
    """Delete partitions ``days`` of ``name`` in ONE commit (none when ``days`` is empty); returns them sorted."""
    days = sorted({check_ds(d) for d in days})
    if days:
        predicate = "ds IN (" + ", ".join(f"'{d}'" for d in days) + ")"  # checked YYYY-MM-DD values only
        store.delta_table(name).delete(predicate)
        log.info("%s: expired %d partition(s) %s..%s", name, len(days), days[0], days[-1])
    return days


def vacuum(store: TableStore, name: str, *, retention_hours: int, dry_run: bool = False) -> list[str]:
    """Delete the files ``Warehouse.vacuum`` describes; returns the paths that existed and were (or, with
    ``dry_run``, would be) deleted. delta-rs also lists tombstones whose files are gone and commits a
    VACUUM START/END pair even when that is all: a dry run first, and no vacuum when nothing exists."""
    table = store.delta_table(name)
    listed = table.vacuum(retention_hours=retention_hours, dry_run=True, enforce_retention_duration=False, full=True)
    fs, root = filesystem_for(store.table_uri(name))
    full = [p.split("://", 1)[1] if "://" in p else p if p.startswith("/") else f"{root}/{p}" for p in listed]
    infos = fs.get_file_info(full) if full else []
    present = sorted(p for p, info in zip(listed, infos) if info.type == pafs.FileType.File)
    if present and not dry_run:
        table.vacuum(retention_hours=retention_hours, dry_run=False, enforce_retention_duration=False, full=True)
    return present


def checkpoint(store: TableStore, name: str) -> int:
    """Write a checkpoint of the latest version and drop log entries past ``delta.logRetentionDuration``
    (older than the checkpoint only); returns the version checkpointed."""
    table = store.delta_table(name)
    table.create_checkpoint()
    table.cleanup_metadata()
    return table.version()
