"""The warehouse: Delta tables by name under one URI, written only through validated, atomic commits.

Every table lives at ``<warehouse>/<name>``. ``write_partition`` / ``write_table`` / ``write_full`` validate
against ``schemas.<name>`` and replace exactly what they name in one commit (``stages.warehouse.writes``), so
writing the same rows twice leaves the same rows. Big, streamed or sharded outputs go through
``stage_partition`` / ``commit_staged`` (``stages.warehouse.staging``), Spark data through ``read_spark`` /
``write_spark_partition`` (``stages.warehouse.spark_bridge``) or, computed in Python tasks, ``write_arrow_days``.
``read`` prunes partitions and files on the Delta log before opening any and returns the schema's types. A
write's ``metadata`` goes to the table configuration (``table_metadata``) and to that commit's
``custom_metadata``. The commit protocol and its limits: docs/architecture.md.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from datetime import datetime

import pyarrow as pa
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError

from stages.core.dates import check_ds
from stages.core.redact import redact
from stages.core.settings import resolve_warehouse, vacuum_retention_hours
from stages.core.settings import storage_options as env_storage_options
from stages.warehouse import arrow_write, history, maintenance, spark_bridge, staging, writes
from stages.warehouse.commit import check_present
from stages.warehouse.reads import Filter, filter_expression, partition_filters, pyarrow_dataset, restore_types

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class Warehouse:
    """Delta tables by name under ``uri`` (a local path or any delta-rs URI)."""

    def __init__(self, uri: str | None = None, *, storage_options: dict[str, str] | None = None):
        self.uri = resolve_warehouse(uri)
        self.storage_options = dict(env_storage_options() if storage_options is None else storage_options)

    @classmethod
    def of(cls, warehouse: Warehouse | str | None) -> Warehouse:
        """``warehouse`` itself when it is already a ``Warehouse``, else one opened at that URI (or the default)."""
        return warehouse if isinstance(warehouse, Warehouse) else cls(warehouse)

    def __repr__(self) -> str:
        return f"Warehouse({redact(self.uri)!r})"  # a URI may carry a password or a signed query

    # ---- opening tables -------------------------------------------------------------------------
    def table_uri(self, name: str) -> str:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError(f"table name must match {_NAME_RE.pattern}, got {name!r}")
        return f"{self.uri}/{name}"

    def exists(self, name: str) -> bool:
        return DeltaTable.is_deltatable(self.table_uri(name), storage_options=self.storage_options or None)

    def delta_table(self, name: str, version: int | None = None) -> DeltaTable:
        """The ``DeltaTable`` at ``version`` (latest when None); ``ValueError`` if missing."""
        if not self.exists(name):
            raise ValueError(f"table {name} does not exist in warehouse {self.uri}")
        table = DeltaTable(self.table_uri(name), storage_options=self.storage_options or None)
        if version is not None:
            if not isinstance(version, int) or version < 0 or version > table.version():
                raise ValueError(f"table {name}: version must be 0..{table.version()}, got {version!r}")
            try:
                table.load_as_version(version)
            except DeltaError as exc:  # its log entries are gone (dropped at a checkpoint after the retention)
                retention = history.log_retention(self.delta_table(name))
                raise ValueError(f"table {name}: version {version} can no longer be loaded "
                                 f"({str(exc).splitlines()[0]}); commits older than "
                                 f"{history.LOG_RETENTION_KEY} = {retention} leave the log at checkpoints") from None
        return table

    def version_as_of(self, name: str, as_of: int | str | datetime) -> int:
        """The version ``as_of`` names: itself (checked) or the newest committed at or before a timestamp."""
        return history.resolve_as_of(self, name, as_of)

    def version(self, name: str) -> int | None:
        """The latest committed version, or None when the table does not exist."""
        return self.delta_table(name).version() if self.exists(name) else None

    # ---- partitions -----------------------------------------------------------------------------
    def partitions(self, name: str, version: int | None = None) -> list[str]:
        """Sorted ``ds`` values that have files in the snapshot ([] when the table is missing)."""
        if not self.exists(name):
            return []
        actions = pa.table(self.delta_table(name, version).get_add_actions(flatten=True))
        if "partition.ds" not in actions.column_names:
            raise ValueError(f"table {name} is not partitioned by ds")
        return sorted(set(actions.column("partition.ds").to_pylist()))

    def latest_partition(self, name: str, *, before: str | None = None,
                         at_or_before: str | None = None) -> str | None:
        """The newest ``ds`` < ``before`` (and/or <= ``at_or_before``); None when there is none."""
        days = self.partitions(name)
        if before is not None:
            days = [d for d in days if d < check_ds(before, name="before")]
        if at_or_before is not None:
            days = [d for d in days if d <= check_ds(at_or_before, name="at_or_before")]
        return days[-1] if days else None

    # ---- reading --------------------------------------------------------------------------------
    def read(self, name: str, *, ds: str | None = None, start: str | None = None, end: str | None = None,
             columns: Sequence[str] | None = None, filters: Sequence[Filter] | None = None,
             version: int | None = None) -> pa.Table:
        """Rows of the snapshot (latest or ``version``) as Arrow, with ``ds`` restored, in the schema's types.

        ``ds`` (one day) or ``start``/``end`` (inclusive) select partitions; only their files are opened, and of
        those only files whose log statistics may match ``filters`` (``(column, op, value)``, op in
        ``== != < <= > >= in``, ANDed; pushed down to the row groups too). Unknown columns: ``ValueError``.
        """
        table = self.delta_table(name, version)
        pruning = partition_filters(ds, start, end)
        dataset = pyarrow_dataset(table, pruning)
        expr = filter_expression(list(pruning) + list(filters or ()), dataset.schema, name)
        if columns is not None:
            unknown = [c for c in columns if c not in dataset.schema.names]
            if unknown:
                raise ValueError(f"table {name}: unknown column(s) {', '.join(unknown)}")
        try:
            out = dataset.to_table(columns=list(columns) if columns is not None else None, filter=expr)
        except (OSError, pa.ArrowInvalid) as exc:  # a file the log names may be gone or damaged: say so
            files = spark_bridge.snapshot_files(self, name, ds=ds, start=start, end=end, version=version)
            check_present(self.table_uri(name), name, [rel for rel, _ in files])
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ValueError(f"table {name}: read failed ({first}); `lum verify` checks its files") from None
        return restore_types(name, out)

    # ---- writing (bodies in stages.warehouse.writes) -------------------------------------------
    def write_partition(self, name: str, table: pa.Table, *, ds: str,
                        metadata: dict[str, str] | None = None, dim: int | None = None) -> int:
        """Validate ``table`` and atomically replace partition ``ds`` with it; returns the version."""
        return writes.write_partition(self, name, table, ds=ds, metadata=metadata, dim=dim)

    def write_table(self, name: str, table: pa.Table | Iterable[pa.Table], *,
                    metadata: dict[str, str] | None = None) -> int:
        """Validate and atomically overwrite an unpartitioned table; returns the version. ``table`` may be an
        iterable of chunks, each validated as the write streams it (memory: a chunk, not the table; keys are
        checked within a chunk, so the caller keeps the chunks' keys apart)."""
        return writes.write_table(self, name, table, metadata=metadata)

    def write_full(self, name: str, table: pa.Table, *, days: Sequence[str] | None = None) -> int:
        """Validate a many-day ``table`` of a ds-partitioned table and write it in ONE commit; returns the version.
        ``days=None`` replaces the whole table, a list of days exactly those partitions (rows outside refused)."""
        return writes.write_full(self, name, table, days=days)

    def merge_table(self, name: str, table: pa.Table, *, update: bool = True,
                    metadata: dict[str, str] | None = None) -> int:
        """Validate ``table`` and merge it into unpartitioned ``name`` by its key in ONE commit (new keys
        inserted, matched rows replaced when ``update``); no commit when nothing changes. Returns the version."""
        return writes.merge_table(self, name, table, update=update, metadata=metadata)

    # ---- table metadata -------------------------------------------------------------------------
    def table_metadata(self, name: str) -> dict[str, str]:
        """The Delta table configuration (``{}`` when the table does not exist)."""
        if not self.exists(name):
            return {}
        return dict(self.delta_table(name).metadata().configuration)

    def set_table_metadata(self, name: str, metadata: dict[str, str]) -> None:
        """Store ``metadata`` in the table configuration; commits only when a value changes."""
        current = self.table_metadata(name)
        changed = {str(k): str(v) for k, v in metadata.items() if current.get(str(k)) != str(v)}
        if changed:
            self.delta_table(name).alter.set_table_properties(changed, raise_if_not_exists=False)

    # ---- staged and Spark writes (stages.warehouse.staging, stages.warehouse.spark_bridge) ----------
    def stage_partition(self, name: str, *, ds: str, run_id: str, shard: str | None = None,
                        dim: int | None = None, file_bytes: int | None = None) -> staging.PartitionStager:
        """A stager for shard ``shard`` ("i/n") of partition ``ds``; its files stay invisible until committed.
        ``file_bytes``: sorted chunks share files of about that size (None: one file per chunk)."""
        return staging.PartitionStager(self, name, ds=ds, run_id=run_id, shard=shard, dim=dim, file_bytes=file_bytes)

    def commit_staged(self, name: str, *, ds: str, run_id: str, shards: int | None = None,
                      metadata: dict[str, str] | None = None) -> int:
        """ONE commit of every staged shard of ``run_id`` as partition ``ds``; returns the version."""
        return staging.commit_staged(self, name, ds=ds, run_id=run_id, shards=shards, metadata=metadata)

    def commit_staged_days(self, name: str, *, days: Sequence[str], run_id: str, clear: Sequence[str] = (),
                           metadata: dict[str, str] | None = None) -> int:
        """ONE commit of the staged files of ``run_id`` for every day of ``days`` (each replaces its partition);
        the partitions ``clear`` names are emptied by the same commit. Returns the version."""
        return staging.commit_staged_days(self, name, days=days, run_id=run_id, clear=clear, metadata=metadata)

    def read_spark(self, spark, name: str, *, ds: str | None = None, start: str | None = None,
                   end: str | None = None, version: int | None = None):
        """A Spark DataFrame over the snapshot's files of the selected partitions, ``ds`` restored."""
        return spark_bridge.read_spark(self, spark, name, ds=ds, start=start, end=end, version=version)

    def write_spark_partition(self, name: str, df, *, ds: str, app_id: str | None = None,
                              metadata: dict[str, str] | None = None,
                              commit_metadata: dict[str, str] | None = None,
                              check: spark_bridge.WrittenCheck | None = None) -> int:
        """Spark writes ``df`` as partition ``ds``; delta-rs makes ONE commit; returns the version.
        ``commit_metadata`` goes to that commit only (not the table configuration); ``check`` sees the written
        files' stats before the commit (its ValueError commits nothing)."""
        return spark_bridge.write_spark_partition(self, name, df, ds=ds, app_id=app_id, metadata=metadata,
                                                  commit_metadata=commit_metadata, check=check)

    def write_arrow_days(self, name: str, df, fn, *, days: Sequence[str], metadata: dict[str, str] | None = None,
                         commit_metadata: dict[str, str] | None = None,
                         check: spark_bridge.WrittenCheck | None = None, keyed: bool = False,
                         tally: arrow_write.Tally | None = None, finish=None) -> int:
        """``fn`` over each partition of ``df`` (Spark) written by Python tasks as partitions ``days``, ONE commit
        (``stages.warehouse.arrow_write``, which says what ``tally`` and ``finish`` do); returns the version."""
        return arrow_write.write_arrow_days(self, name, df, fn, days=days, metadata=metadata,
                                            commit_metadata=commit_metadata, check=check, keyed=keyed,
                                            tally=tally, finish=finish)

    # ---- maintenance (stages.warehouse.maintenance): vacuum, optimize, expire, checkpoint ---------------
    def vacuum(self, name: str, *, dry_run: bool = False, retention_hours: int | None = None) -> list[str]:
        """Delete files no snapshot newer than ``retention_hours`` needs, and stray files of failed runs.

        delta-rs ``vacuum(full=True)`` also removes files no commit ever named (a crashed Spark or staged write).
        The retention protects staged files of a run still in flight: pass 0 only when no writer of this table
        runs. Time travel to versions whose files were removed stops working, so the retention bounds how far
        back ``--as-of`` and ``--reproduce`` reach: None = ``LUM_VACUUM_RETENTION_HOURS`` (default 168, 7 days).
        Returns the deleted paths (no commit when there are none)."""
        if retention_hours is None:
            retention_hours = vacuum_retention_hours()
        if not isinstance(retention_hours, int) or retention_hours < 0:
            raise ValueError(f"retention_hours must be an int >= 0, got {retention_hours!r}")
        return maintenance.vacuum(self, name, retention_hours=retention_hours, dry_run=dry_run)

    def optimize(self, name: str, *, ds: str, cluster_by: str | None = None, target_size: int = 128 << 20,
                 row_group_rows: int = 8192, compression: str = "ZSTD", sort_bytes: int = 256 << 20,
                 spill_codec: str = "lz4") -> dict:
        """Compact partition ``ds`` (or sort it by ``cluster_by`` in about ``sort_bytes`` of memory) in at most
        one commit; rows unchanged. ``spill_codec``: of the sort's temporary spill (lz4, zstd, none)."""
        return maintenance.optimize(self, name, ds=ds, cluster_by=cluster_by, target_size=target_size,
                                    row_group_rows=row_group_rows, compression=compression, sort_bytes=sort_bytes,
                                    spill_codec=spill_codec)

    def expire(self, name: str, days: Sequence[str]) -> list[str]:
        """Delete partitions ``days`` in one commit (none when empty); returns them."""
        return maintenance.expire(self, name, list(days))

    def checkpoint(self, name: str) -> int:
        """A Delta checkpoint of the latest version; log entries past the log retention removed."""
        return maintenance.checkpoint(self, name)

    def history(self, name: str, limit: int | None = None) -> list[dict]:
        """Commits, newest first: version, timestamp, operation, parameters and custom metadata."""
        return self.delta_table(name).history(limit)
