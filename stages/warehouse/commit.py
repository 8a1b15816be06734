"""One delta-rs commit of parquet files that already lie inside a table directory.

Used by the staged writer and the Spark bridge: ``commit_partition_files`` / ``commit_overwrite`` build one
``AddAction`` per file and make ONE overwrite commit of the given partitions, creating the table if needed.
A file's size and statistics come from the ``FileStats`` its writer recorded (``stats``, by relpath: no file
is opened, one batched stat checks that each exists with the recorded size) or else from its parquet footer. Every file is checked first (inside the table directory, in the
partition being replaced) because delta-rs does not check it. The commit records the app transaction
``(app_id, 1)`` and is skipped when ``app_id`` is already recorded, so a retried task does not apply twice;
the check precedes the commit, so one task instance per (table, ds) is assumed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, Schema, Transaction
from deltalake.transaction import AddAction, create_table_with_add_actions

from stages.core.phases import phase
from stages.warehouse.stats import FileStats, footer_stats

log = logging.getLogger(__name__)

TXN_VERSION = 1  # one commit per app_id: any recorded version means "already applied"


@dataclass(frozen=True)
class DataFile:
    """A parquet file inside the table directory, by its path relative to the table root."""

    relpath: str  # '/'-separated, relative to the table root, never starting with '/' or '..'
    ds: str  # the partition value this file is committed under


def filesystem_for(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and the in-filesystem path of ``uri`` (local paths and pyarrow URIs)."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    return pafs.FileSystem.from_uri(uri)


def missing_files(table_uri: str, relpaths: Sequence[str]) -> list[str]:
    """The ``relpaths`` (as the Delta log names them, relative to the table root) that are not files: one
    batched ``get_file_info`` (a stat per file on local disk)."""
    if not relpaths:
        return []
    fs, root = filesystem_for(table_uri)
    infos = fs.get_file_info([f"{root}/{unquote(rel)}" for rel in relpaths])
    return [rel for rel, info in zip(relpaths, infos) if info.type != pafs.FileType.File]


def check_present(table_uri: str, name: str, relpaths: Sequence[str]) -> None:
    """``ValueError`` naming the first data file of the Delta log that is missing on storage."""
    missing = missing_files(table_uri, relpaths)
    if missing:
        raise ValueError(f"table {name}: data file {missing[0]} is missing ({len(missing)} of {len(relpaths)} "
                         f"files of this read; the Delta log still names it); `lum verify` lists them, rewriting "
                         f"the partition repairs it")


def footer_file_stats(fs: pafs.FileSystem, table_path: str, item: DataFile, size: int) -> FileStats:
    """``FileStats`` of one file from its parquet footer (``stages.warehouse.stats.footer_stats``): one open."""
    with fs.open_input_file(f"{table_path}/{item.relpath}") as handle:
        meta = pq.read_metadata(handle)
    return FileStats(size=int(size), stats=footer_stats(meta, exclude=("ds",)))


def files_stats(fs: pafs.FileSystem, table_path: str, files: Sequence[DataFile],
                recorded: Mapping[str, FileStats] | None = None, *, what: str = "") -> list[tuple[pafs.FileInfo, FileStats]]:
    """(file info, stats) of every file: one batched stat (a missing file is a ``ValueError`` naming it), then
    the ``recorded`` stats of a file whose recorded size matches, else its footer. With ``recorded`` given,
    the footers read instead are logged (warning: how many, and the first)."""
    infos = fs.get_file_info([f"{table_path}/{item.relpath}" for item in files]) if files else []
    out, footers = [], []
    for item, info in zip(files, infos):
        if info.type != pafs.FileType.File:
            raise ValueError(f"data file {item.relpath} is missing under {table_path}")
        stats = (recorded or {}).get(item.relpath)
        if stats is None or stats.size != info.size:
            stats = footer_file_stats(fs, table_path, item, info.size)
            footers.append(item.relpath)
        out.append((info, stats))
    if recorded is not None and footers:
        log.warning("%s: %d of %d files had no recorded stats (first %s); read their parquet footers", what,
                    len(footers), len(files), footers[0])
    return out


def add_action(item: DataFile, info: pafs.FileInfo, stats: FileStats, *, data_change: bool = True) -> AddAction:
    """An ``AddAction`` for one file, with Delta stats (numRecords, min/max, nullCount of top-level primitive
    columns), so readers skip files by value range from the log alone (``Warehouse.read`` filters,
    ``stages.warehouse.scan``). No I/O: ``info`` is the file's stat, ``stats`` from ``files_stats``.
    ``data_change=False``: a rewrite of rows already in the table (clustering)."""
    mtime_ms = int((info.mtime_ns or time.time_ns()) // 1_000_000)
    return AddAction(path=item.relpath, size=int(info.size), partition_values={"ds": item.ds},
                     modification_time=mtime_ms, data_change=data_change, stats=json.dumps(stats.stats, allow_nan=False))


def check_files(files: Sequence[DataFile], ds: str, name: str) -> None:
    """Refuse any file outside the table root or committed under another partition."""
    for item in files:
        parts = item.relpath.split("/")
        if item.relpath.startswith("/") or ".." in parts or "://" in item.relpath:
            raise ValueError(f"table {name}: file {item.relpath!r} is not inside the table directory")
        if item.ds != ds:
            raise ValueError(f"table {name}: file {item.relpath} belongs to partition {item.ds}, "
                             f"not {ds}; refusing the commit")
        dirs = [p for p in parts[:-1] if p.startswith("ds=")]
        if any(d != f"ds={ds}" for d in dirs):
            raise ValueError(f"table {name}: file {item.relpath} lies in {dirs[-1]}, "
                             f"outside partition ds={ds}")


def already_committed(table_uri: str, app_id: str, storage_options: dict | None) -> bool:
    if not DeltaTable.is_deltatable(table_uri, storage_options=storage_options):
        return False
    return DeltaTable(table_uri, storage_options=storage_options).transaction_version(app_id) is not None


def commit_partition_files(table_uri: str, name: str, *, ds: str, files: Sequence[DataFile],
                           schema: pa.Schema, app_id: str, storage_options: dict | None = None,
                           metadata: dict[str, str] | None = None,
                           stats: Mapping[str, FileStats] | None = None) -> tuple[int, bool]:
    """ONE overwrite commit replacing partition ``ds`` with ``files``; returns (version, applied).

    ``schema``: the full table schema including ``ds`` (used when the table is created).
    ``applied`` is False when ``app_id`` was already committed (nothing changes). ``stats``: as ``files_stats``.
    """
    check_files(files, ds, name)
    return commit_overwrite(table_uri, name, files=files, schema=schema, app_id=app_id,
                            storage_options=storage_options, metadata=metadata,
                            partition_filter=("ds", "=", ds), what=f"ds={ds}", stats=stats)


def evolved_schema(table: DeltaTable, schema: pa.Schema) -> Schema:
    """The table's Delta schema plus the columns of ``schema`` it lacks (appended, nullable): a column added
    to a table's contract after its first partitions (``TableSpec.optional``) becomes part of the table."""
    current = table.schema()
    names = {f.name for f in current.fields}
    added = [f for f in Schema.from_arrow(schema).fields if f.name not in names]
    return Schema(list(current.fields) + added) if added else current


def commit_overwrite(table_uri: str, name: str, *, files: Sequence[DataFile], schema: pa.Schema, app_id: str,
                     storage_options: dict | None, metadata: dict[str, str] | None,
                     partition_filter: tuple[str, str, Any], what: str,
                     stats: Mapping[str, FileStats] | None = None) -> tuple[int, bool]:
    """ONE overwrite commit of already-checked ``files`` replacing the partitions ``partition_filter``
    selects (``("ds", "=", day)`` or ``("ds", "in", days)``), recording ``app_id`` as an app transaction;
    creates the table when it does not exist. Returns (version, applied); applied is False (and nothing
    changes) when ``app_id`` was already committed. ``what`` names the partitions in log lines; ``stats``: the
files' recorded ``FileStats`` by relpath (``files_stats``: a footer is read only for a file without)."""
    if already_committed(table_uri, app_id, storage_options):
        version = DeltaTable(table_uri, storage_options=storage_options).version()
        log.info("%s %s: app transaction %s already committed (version %d); skipping", name, what, app_id, version)
        return version, False
    fs, table_path = filesystem_for(table_uri)
    actions = [add_action(item, info, file_stats)
               for item, (info, file_stats) in zip(files, files_stats(fs, table_path, files, stats,
                                                                     what=f"{name} {what}"))]
    props = CommitProperties(custom_metadata=dict(metadata or {}),
                             app_transactions=[Transaction(app_id, TXN_VERSION)])
    exists = DeltaTable.is_deltatable(table_uri, storage_options=storage_options)
    table = DeltaTable(table_uri, storage_options=storage_options) if exists else None
    with phase("delta_commit", f"{name} {what}"):  # from the snapshot just read to the new version
        if table is not None:
            table.create_write_transaction(actions, "overwrite", evolved_schema(table, schema), partition_by=["ds"],
                                           partition_filters=[partition_filter], commit_properties=props)
        else:
            create_table_with_add_actions(table_uri, Schema.from_arrow(schema), actions, mode="error",
                                          partition_by=["ds"], storage_options=storage_options,
                                          commit_properties=props)
    version = DeltaTable(table_uri, storage_options=storage_options).version()
    rows = sum(json.loads(a.stats)["numRecords"] for a in actions)
    log.info("committed %s %s: %d files, %d rows, version %d", name, what, len(actions), rows, version)
    return version, True


def commit_days_files(table_uri: str, name: str, *, days: Sequence[str], files: Sequence[DataFile],
                      schema: pa.Schema, app_id: str, storage_options: dict | None = None,
                      metadata: dict[str, str] | None = None,
                      stats: Mapping[str, FileStats] | None = None) -> tuple[int, bool]:
    """ONE overwrite commit replacing partitions ``days`` with ``files``; returns (version, applied).

    Every file must lie in one of ``days`` (``check_files`` per day); one day delegates to
    ``commit_partition_files``. ``applied`` is False when ``app_id`` was already committed. ``stats``: as
    ``files_stats``.
    """
    days = sorted(set(days))
    if len(days) == 1:
        return commit_partition_files(table_uri, name, ds=days[0], files=files, schema=schema, app_id=app_id,
                                      storage_options=storage_options, metadata=metadata, stats=stats)
    outside = [f for f in files if f.ds not in days]
    if outside:
        raise ValueError(f"table {name}: file {outside[0].relpath} belongs to partition {outside[0].ds}, "
                         f"not one of the {len(days)} days {days[0]}..{days[-1]} being replaced; refusing the commit")
    for day in days:
        check_files([f for f in files if f.ds == day], day, name)
    return commit_overwrite(table_uri, name, files=files, schema=schema, app_id=app_id,
                            storage_options=storage_options, metadata=metadata,
                            partition_filter=("ds", "in", days), what=f"ds={days[0]}..{days[-1]} ({len(days)} days)",
                            stats=stats)
