"""Sort one partition by a column in bounded memory: maintain's clustering, an external range sort.

``cluster_partition`` rewrites partition ``ds`` of a table sorted by ``column`` (ties by the table's key, so the
order is deterministic) in ONE commit, the same layout a z-order on one column writes: files of about
``target_size`` bytes in ``column`` order, row groups of ``row_group_rows``.

1. plan: ``column`` is read alone, batch by batch, keeping every k-th value (at most ``SAMPLE_ROWS``); its
   quantiles cut the values into ranges of about ``sort_bytes / 3`` of rows each (in Arrow's memory). Equal
   values never span two ranges; a value with more than a range of rows gets one of its own.
2. scatter: the files of the snapshot read (nothing else) are scanned batch by batch and each batch's rows
   appended to one Arrow IPC spill file per range (IPC, not parquet: an appended batch leaves nothing in memory;
   each write holds up to ``SPILL_BATCH_ROWS`` of a range's rows, compressed by ``spill_codec``)
   in a temporary folder (under ``_staging`` of a local warehouse, else the system's); at most
   ``MAX_OPEN_RANGES`` files are open, more ranges take more scans.
3. sort: range by range, its spill file is read back, copied in sorted order and written to the output files
   (inside the partition folder, unreferenced until the commit).
4. commit: add the new files and remove the old ones (``dataChange: false``: rows unchanged) against the
   snapshot read; a partition changed since is an error and nothing is committed.
Memory: about ``sort_bytes`` (a range's spill file read back, its copy and its sorted copy; while scattering,
at most ``sort_bytes / 2`` of rows waiting for a spill write) plus a few scan batches and one row group,
whatever the partition's size. Disk: the new files (the partition again, as parquet) plus at most
``MAX_OPEN_RANGES`` ranges of spill at once (each range's file is deleted once sorted): about
``MAX_OPEN_RANGES * sort_bytes / 3`` of rows in Arrow's memory, compressed by ``spill_codec`` (lz4 by default;
knowledge rows spill at about 1.3x their parquet size with lz4, 1.9x with none), or the whole partition when it
is smaller.
The temporary folder is removed on success and failure; a killed run leaves the table as it was (its files
unreferenced, removed by vacuum).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, Transaction
from deltalake.transaction import RemoveAction

from stages.core.dates import check_ds
from stages.core.phases import phase
from stages.warehouse.commit import (
    TXN_VERSION,
    DataFile,
    add_action,
    check_files,
    files_stats,
    filesystem_for,
)
from stages.warehouse.reads import local_root, pyarrow_dataset
from stages.warehouse.stats import FileStats, recorded_stats
from stages.warehouse.store import TableStore

log = logging.getLogger(__name__)

SPILL_PREFIX = "lum-cluster-"  # spill folders under _staging/<table>/<ds>/
SAMPLE_ROWS = 1 << 20  # values of the sort column kept to plan the ranges
MAX_OPEN_RANGES = 256  # spill files open at once; more ranges scan the partition again per window
SCAN_BATCH_BYTES = 16 << 20  # one scan batch (capped at a sixteenth of sort_bytes)
# no pre-buffering: it reads ahead much of a file (about 170 MB more held while scanning a 1M-user knowledge day)
SCAN_OPTIONS = pads.ParquetFragmentScanOptions(pre_buffer=False)
CODECS = {"ZSTD": "zstd", "LZ4_RAW": "lz4", "SNAPPY": "snappy", "UNCOMPRESSED": "none"}  # pyarrow's names
SPILL_CODECS = ("lz4", "zstd", "none")  # of the IPC spill files (Arrow IPC's codecs)
SPILL_CODEC = "lz4"  # the spill's disk against its CPU: README, "maintain's spill"
SPILL_BATCH_ROWS = 8192  # rows of a range held before one compressed spill write


@dataclass(frozen=True)
class Snapshot:
    """Partition ``ds`` at ``version``: its files (relpaths as the log names them), sizes and row count."""

    version: int
    paths: list[str]
    sizes: list[int]
    rows: int


def snapshot(table: DeltaTable, ds: str) -> Snapshot:
    actions = pa.table(table.get_add_actions(flatten=True))
    part = actions.filter(pc.equal(actions.column("partition.ds"), ds))
    return Snapshot(version=table.version(), paths=part.column("path").to_pylist(),
                    sizes=[int(s) for s in part.column("size_bytes").to_pylist()],
                    rows=int(pc.sum(part.column("num_records")).as_py() or 0) if part.num_rows else 0)


def plan_bounds(sampled: np.ndarray, rows: int, rows_per_range: int) -> np.ndarray:
    """Sorted cut points of ``sampled`` (a sorted sample of the column): range r holds bounds[r-1] <= v < bounds[r].
    About ``rows / rows_per_range`` ranges; equal values never span two ranges, and a value with more than a
    range of rows gets a range of its own."""
    n_ranges = -(-rows // max(1, rows_per_range))
    if n_ranges <= 1 or len(sampled) == 0:
        return sampled[:0]
    cuts = np.unique(sampled[(np.arange(1, n_ranges) * len(sampled)) // n_ranges])
    heavy_end = np.searchsorted(sampled, cuts, side="right")  # past the cut value's own rows
    heavy = heavy_end - np.searchsorted(sampled, cuts, side="left") > len(sampled) // n_ranges
    after = sampled[heavy_end[heavy & (heavy_end < len(sampled))]]  # the next value starts a new range
    cuts = np.unique(np.concatenate([cuts, after]))
    return cuts[cuts > sampled[0]]


def sample_column(dataset, column: str, rows: int) -> np.ndarray:
    """Every k-th value of ``column`` in scan order (k = rows / ``SAMPLE_ROWS``, at least 1), sorted."""
    stride, offset, kept = max(1, -(-rows // SAMPLE_ROWS)), 0, []
    for batch in dataset.to_batches(columns=[column], batch_readahead=1, fragment_readahead=1,
                                    fragment_scan_options=SCAN_OPTIONS):
        values = batch.column(0).to_numpy(zero_copy_only=False)
        kept.append(values[(-offset) % stride::stride].copy())
        offset += len(values)
    return np.sort(np.concatenate(kept)) if kept else np.zeros(0, np.int64)


def scatter(dataset, columns: list[str], column: str, bounds: np.ndarray, folder: str, batch_rows: int,
            window: range, *, codec: str = SPILL_CODEC, buffer_bytes: int = 64 << 20, row_bytes: int = 1) -> list[int]:
    """One scan: the rows of ranges in ``window`` appended to ``folder/<range>.arrow`` (Arrow IPC compressed with
    ``codec``); returns the ranges written. A range's rows are held until there are ``SPILL_BATCH_ROWS`` of them
    (fewer when the window's ranges would hold more than ``buffer_bytes`` together), so each compressed write is
    large enough for its per-buffer cost not to matter."""
    if codec not in SPILL_CODECS:
        raise ValueError(f"spill codec must be one of {', '.join(SPILL_CODECS)}, got {codec!r}")
    options = pa.ipc.IpcWriteOptions(compression=None if codec == "none" else codec)
    flush_rows = max(1, min(SPILL_BATCH_ROWS, buffer_bytes // max(1, len(window) * row_bytes)))
    writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}
    held: dict[int, list[pa.RecordBatch]] = {}
    held_rows: dict[int, int] = {}

    def flush(r: int) -> None:
        rows = pa.Table.from_batches(held.pop(r)).combine_chunks()  # one record batch a write
        held_rows.pop(r)
        if r not in writers:
            writers[r] = pa.ipc.new_file(f"{folder}/{r:06d}.arrow", rows.schema, options=options)
        writers[r].write_table(rows)

    try:
        for batch in dataset.to_batches(columns=columns, batch_size=batch_rows, batch_readahead=1, use_threads=False,
                                        fragment_readahead=1, fragment_scan_options=SCAN_OPTIONS):
            ranges = np.searchsorted(bounds, batch.column(column).to_numpy(zero_copy_only=False), side="right")
            inside = (ranges >= window.start) & (ranges < window.stop)
            if not inside.any():
                continue
            by_range = np.argsort(ranges, kind="stable")
            order = by_range[inside[by_range]]
            found, starts, counts = np.unique(ranges[order], return_index=True, return_counts=True)
            for r, start, count in zip(found.tolist(), starts.tolist(), counts.tolist()):
                # a take per range: the piece owns its buffers, so a held piece never pins the scan batch
                held.setdefault(r, []).append(batch.take(pa.array(order[start:start + count])))
                held_rows[r] = held_rows.get(r, 0) + count
                if held_rows[r] >= flush_rows:
                    flush(r)
        for r in sorted(held):
            flush(r)
    finally:
        for writer in writers.values():
            writer.close()
    return sorted(writers)


def sorted_ranges(dataset, columns: list[str], column: str, order: list[str], bounds: np.ndarray, folder: str,
                  batch_rows: int, *, codec: str = SPILL_CODEC, buffer_bytes: int = 64 << 20,
                  row_bytes: int = 1, stats: dict[str, int] | None = None) -> Iterator[pa.Table]:
    """Every range's rows sorted by ``order``, ranges in increasing ``column`` order (one range in memory).
    ``stats["spill_bytes"]``: the largest spill on disk at once (a window's files, right after its scan)."""
    n_ranges = len(bounds) + 1
    for first in range(0, n_ranges, MAX_OPEN_RANGES):
        written = scatter(dataset, columns, column, bounds, folder, batch_rows,
                          range(first, min(n_ranges, first + MAX_OPEN_RANGES)), codec=codec,
                          buffer_bytes=buffer_bytes, row_bytes=row_bytes)
        if stats is not None:
            on_disk = sum(os.path.getsize(f"{folder}/{r:06d}.arrow") for r in written)
            stats["spill_bytes"] = max(stats.get("spill_bytes", 0), on_disk)
        for r in written:
            path = f"{folder}/{r:06d}.arrow"
            with pa.memory_map(path) as source:
                table = pa.ipc.open_file(source).read_all().combine_chunks()  # a copy: the map can go
            pafs.LocalFileSystem().delete_file(path)
            table = table.take(pc.sort_indices(table, [(c, "ascending") for c in order]))  # at most two copies
            yield table
            del table


def remove_stale_spills(parent: str) -> None:
    """Delete the spill folders a killed sort of this partition left (never referenced by the table; a sort
    running beside this one loses its spill and fails before its commit, so nothing half-sorted is published)."""
    for stale in pathlib.Path(parent).glob(f"{SPILL_PREFIX}*"):
        log.warning("removing %s, left by an earlier sort that did not finish", stale)
        shutil.rmtree(stale, ignore_errors=True)


class FileRoller:
    """Writes tables in order as parquet files ``<partition>/lum-cluster-<token>-<n>.parquet`` of
    ``row_group_rows`` row groups, starting a new file once one reaches ``target_size`` bytes."""

    def __init__(self, fs: pafs.FileSystem, table_path: str, ds: str, schema: pa.Schema, *, target_size: int,
                 row_group_rows: int, compression: str, dictionary_page_bytes: int):
        self.fs, self.table_path, self.ds, self.schema = fs, table_path, ds, schema
        self.target_size, self.row_group_rows = target_size, row_group_rows
        self.options = {"compression": CODECS.get(compression, compression),
                        "dictionary_pagesize_limit": dictionary_page_bytes}
        self.token = uuid.uuid4().hex[:12]
        self.files: list[DataFile] = []
        self.stats: dict[str, FileStats] = {}
        self.pending: list[pa.Table] = []  # fewer than row_group_rows rows, carried into the next row group
        self.sink = self.writer = None
        self.footer: list[pq.FileMetaData] = []

    def write(self, table: pa.Table) -> None:
        self.pending.append(table)
        rows = sum(t.num_rows for t in self.pending)
        if rows < self.row_group_rows:
            return
        merged = pa.concat_tables(self.pending)
        full = rows - rows % self.row_group_rows
        for start in range(0, full, self.row_group_rows):
            self._row_group(merged.slice(start, self.row_group_rows))
        rest = merged.slice(full)  # copied: a slice would keep the whole range it came from in memory
        self.pending = [rest.take(pa.array(np.arange(rest.num_rows)))] if full < rows else []

    def _row_group(self, table: pa.Table) -> None:
        if self.writer is None:
            relpath = f"ds={self.ds}/lum-cluster-{self.token}-{len(self.files):05d}.parquet"
            self.fs.create_dir(f"{self.table_path}/ds={self.ds}", recursive=True)
            self.files.append(DataFile(relpath=relpath, ds=self.ds))
            self.sink = self.fs.open_output_stream(f"{self.table_path}/{relpath}")
            self.writer = pq.ParquetWriter(self.sink, self.schema, metadata_collector=self.footer, **self.options)
        self.writer.write_table(table.cast(self.schema), row_group_size=self.row_group_rows)
        if self.sink.tell() >= self.target_size:
            self._close_file()

    def _close_file(self) -> None:
        self.writer.close()
        size = self.sink.tell()
        self.sink.close()
        self.stats[self.files[-1].relpath] = recorded_stats(self.footer.pop(), size)
        self.writer = self.sink = None

    def close(self) -> None:
        if self.pending:
            self._row_group(pa.concat_tables(self.pending))
            self.pending = []
        if self.writer is not None:
            self._close_file()

    def discard(self) -> None:
        """Best effort: close and delete the files written (none is referenced yet)."""
        try:
            if self.writer is not None:
                self.writer.close()
                self.sink.close()
        finally:
            for item in self.files:
                with contextlib.suppress(OSError):
                    self.fs.delete_file(f"{self.table_path}/{item.relpath}")


def commit_rewrite(store: TableStore, name: str, ds: str, before: Snapshot, files: Sequence[DataFile],
                   stats: dict[str, FileStats], *, app_id: str, column: str) -> int:
    """ONE commit against ``before``'s version: add ``files``, remove ``before``'s files, both ``dataChange:
    false``. ``RuntimeError`` (nothing committed) when partition ``ds`` changed since ``before``."""
    check_files(files, ds, name)
    latest = snapshot(store.delta_table(name), ds)
    if sorted(latest.paths) != sorted(before.paths):
        raise RuntimeError(f"table {name} ds={ds}: the partition changed while it was sorted (version "
                           f"{before.version} -> {latest.version}); nothing committed, rerun maintain")
    fs, table_path = filesystem_for(store.table_uri(name))
    adds = [add_action(item, info, file_stats, data_change=False)
            for item, (info, file_stats) in zip(files, files_stats(fs, table_path, files, stats, what=name))]
    now_ms = int(time.time() * 1000)
    removes = [RemoveAction(path=p, data_change=False, deletion_timestamp=now_ms, size=s, partition_values={"ds": ds})
               for p, s in zip(before.paths, before.sizes)]
    table = store.delta_table(name, before.version)  # conflicts with commits after it are delta-rs' to detect
    props = CommitProperties(custom_metadata={"lum.rewrite": f"cluster by {column}"},
                             app_transactions=[Transaction(app_id, TXN_VERSION)])
    with phase("delta_commit", f"{name} ds={ds} cluster"):
        table.create_write_transaction(adds + removes, "append", table.schema(), partition_by=["ds"],
                                       commit_properties=props)
    return store.delta_table(name).version()


def cluster_partition(store: TableStore, name: str, *, ds: str, column: str, key: Sequence[str], target_size: int,
                      row_group_rows: int, compression: str, sort_bytes: int,
                      dictionary_page_bytes: int, spill_codec: str = SPILL_CODEC) -> dict[str, int]:
    """Rewrite partition ``ds`` sorted by ``column`` then ``key`` (see the module); returns files before/after,
    rows, the ranges sorted and ``spill_bytes`` (the largest spill on disk at once)."""
    ds = check_ds(ds)
    table = store.delta_table(name)
    before = snapshot(table, ds)
    app_id = f"lum/{name}/{ds}/cluster-{column}-v{before.version}"  # two sorts of one snapshot: one commits
    if before.rows == 0:
        return {"files_before": len(before.paths), "files_after": len(before.paths), "rows": before.rows, "ranges": 0,
                "spill_bytes": 0}
    dataset = pyarrow_dataset(table, [("ds", "=", ds)])
    schema = pa.schema([f for f in dataset.schema if f.name != "ds"])  # the files' types (fixed-size lists)
    columns = schema.names
    order = [column] + [c for c in key if c != column and c in columns]
    head = next(iter(dataset.get_fragments())).split_by_row_group()[0].to_table(columns=columns,
                                                                                  schema=dataset.schema)
    row_bytes = max(1, head.nbytes // max(1, head.num_rows))  # one row group: a dataset's head reads ahead
    del head
    bounds = plan_bounds(sample_column(dataset, column, before.rows), before.rows, (sort_bytes // 3) // row_bytes)
    batch_rows = max(1024, min(SCAN_BATCH_BYTES, sort_bytes // 16) // row_bytes)
    fs, table_path = filesystem_for(store.table_uri(name))
    root = local_root(store.uri)
    spill_parent = f"{root}/_staging/{name}/{ds}" if root is not None else None
    if spill_parent is not None:
        pafs.LocalFileSystem().create_dir(spill_parent, recursive=True)
        remove_stale_spills(spill_parent)
    spilled: dict[str, int] = {}
    roller = FileRoller(fs, table_path, ds, schema, target_size=target_size, row_group_rows=row_group_rows,
                        compression=compression, dictionary_page_bytes=dictionary_page_bytes)
    try:
        with phase("cluster_sort", f"{name} ds={ds}"), \
                tempfile.TemporaryDirectory(prefix=SPILL_PREFIX, dir=spill_parent) as folder:
            for part in sorted_ranges(dataset, columns, column, order, bounds, folder, batch_rows, codec=spill_codec,
                                      buffer_bytes=sort_bytes // 2, row_bytes=row_bytes, stats=spilled):
                roller.write(part)
                del part  # before the next range is read back
            roller.close()
        written = sum(s.stats["numRecords"] for s in roller.stats.values())
        if written != before.rows:
            raise RuntimeError(f"table {name} ds={ds}: the sort wrote {written} rows of {before.rows}")
    except BaseException:
        roller.discard()  # before any commit: no file of it is referenced
        raise
    commit_rewrite(store, name, ds, before, roller.files, roller.stats, app_id=app_id, column=column)
    log.info("%s ds=%s: sorted by %s in %d range(s), %d -> %d files", name, ds, column, len(bounds) + 1,
             len(before.paths), len(roller.files))
    return {"files_before": len(before.paths), "files_after": len(roller.files), "rows": before.rows,
            "ranges": len(bounds) + 1, "spill_bytes": spilled.get("spill_bytes", 0)}
