"""Validated, atomic writes of whole tables and partitions (the ``Warehouse.write_*`` and ``merge_table`` bodies).

Each function validates against ``schemas.<name>`` first and replaces exactly what it names in one Delta commit;
a write's ``metadata`` goes to the commit's ``custom_metadata`` and to the table configuration.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence

import pyarrow as pa
from deltalake import CommitProperties, write_deltalake
from deltalake.exceptions import DeltaError

import schemas
from schemas._base import TableSpec
from stages.core.dates import check_ds
from stages.warehouse.store import TableStore

log = logging.getLogger("stages.warehouse.facade")


def write_partition(wh: TableStore, name: str, table: pa.Table, *, ds: str,
                    metadata: dict[str, str] | None = None, dim: int | None = None) -> int:
    """Validate ``table`` and atomically replace partition ``ds`` with it; returns the version."""
    spec = schemas.get(name).SPEC
    if "ds" not in spec.partition_by:
        raise ValueError(f"table {name} is not partitioned; use write_table")
    check_ds(ds)
    data = spec.validate(table, ds=ds, dim=dim)
    write_deltalake(
        wh.table_uri(name), data, partition_by=["ds"], mode="overwrite", predicate=f"ds = '{ds}'",
        storage_options=wh.storage_options or None, schema_mode=_schema_mode(wh, name, data),
        commit_properties=CommitProperties(custom_metadata=dict(metadata)) if metadata else None,
    )
    wh.set_table_metadata(name, metadata or {})
    version = wh.version(name)
    log.info("wrote %s ds=%s: %d rows, version %s", name, ds, data.num_rows, version)
    return version


def _schema_mode(wh: TableStore, name: str, data: pa.Table) -> str | None:
    """The write's schema mode: "merge" when ``data`` has columns the existing table lacks (a column added
    to the contract later: ``TableSpec.optional``), else None (the table's schema as it is)."""
    if not wh.exists(name):
        return None
    return "merge" if set(data.column_names) - {f.name for f in wh.delta_table(name).schema().fields} else None


def write_table(wh: TableStore, name: str, table: pa.Table | Iterable[pa.Table], *,
                metadata: dict[str, str] | None = None) -> int:
    """Validate and atomically overwrite an unpartitioned table; returns the version. ``table`` may be an
    iterable of chunks, each validated as the write streams it (memory: a chunk, not the table; keys are
    checked within a chunk, so the caller keeps the chunks' keys apart)."""
    spec = schemas.get(name).SPEC
    if spec.partition_by:
        raise ValueError(f"table {name} is partitioned by {', '.join(spec.partition_by)}; "
                         "use write_partition")
    errors: list[ValueError] = []  # a chunk's validation error, raised as itself, not as the write's
    data = spec.validate(table) if isinstance(table, pa.Table) else _validated_stream(spec, iter(table), errors)
    try:
        write_deltalake(
            wh.table_uri(name), data, mode="overwrite", storage_options=wh.storage_options or None,
            commit_properties=CommitProperties(custom_metadata=dict(metadata)) if metadata else None,
        )
    except DeltaError:
        if errors:
            raise errors[0] from None
        raise
    wh.set_table_metadata(name, metadata or {})
    version = wh.version(name)
    log.info("wrote %s: %s rows, version %s", name, getattr(data, "num_rows", "streamed"), version)
    return version


def write_full(wh: TableStore, name: str, table: pa.Table, *, days: Sequence[str] | None = None) -> int:
    """Validate a many-day ``table`` of a ds-partitioned table and write it in ONE commit; returns the version.

    ``days=None``: replace the whole table (old partitions not in ``table`` disappear). A list of days:
    replace exactly those partitions (rows outside are refused). One commit, not one per day: full ingests
    span years of days.
    """
    spec = schemas.get(name).SPEC
    if "ds" not in spec.partition_by:
        raise ValueError(f"table {name} is not partitioned; use write_table")
    predicate = None
    if days is not None:
        days = sorted({check_ds(d) for d in days})
        if not days:
            raise ValueError(f"table {name}: write_full needs at least one day in days")
        predicate = "ds IN (" + ", ".join(f"'{d}'" for d in days) + ")"
    data = spec.validate(table)
    write_deltalake(wh.table_uri(name), data, partition_by=["ds"], mode="overwrite",
                    predicate=predicate, schema_mode=_schema_mode(wh, name, data),
                    storage_options=wh.storage_options or None)
    version = wh.version(name)
    log.info("wrote %s: %d rows (%s), version %s", name, data.num_rows,
             "whole table" if days is None else f"{len(days)} day(s)", version)
    return version


def merge_table(wh: TableStore, name: str, table: pa.Table, *, update: bool = True,
                metadata: dict[str, str] | None = None) -> int:
    """Validate ``table`` and merge it into unpartitioned ``name`` by its key in ONE commit: new keys are
    inserted, matched rows replaced when ``update`` (else kept), every other row kept; no commit when
    nothing changes. Creates the table when missing. Returns the version."""
    spec = schemas.get(name).SPEC
    if spec.partition_by:
        raise ValueError(f"table {name} is partitioned by {', '.join(spec.partition_by)}; merge_table "
                         "serves unpartitioned tables")
    data = spec.validate(table)
    if not wh.exists(name):
        return write_table(wh, name, data, metadata=metadata)
    merger = wh.delta_table(name).merge(
        data, predicate=" AND ".join(f"t.{k} = s.{k}" for k in spec.key), source_alias="s", target_alias="t",
        commit_properties=CommitProperties(custom_metadata=dict(metadata)) if metadata else None)
    if update:
        merger = merger.when_matched_update_all()
    result = merger.when_not_matched_insert_all().execute()
    wh.set_table_metadata(name, metadata or {})
    version = wh.version(name)
    log.info("merged %s: %d inserted, %d updated, version %s", name, result.get("num_target_rows_inserted", 0),
             result.get("num_target_rows_updated", 0), version)
    return version


def _validated_stream(spec: TableSpec, chunks: Iterator[pa.Table], errors: list[ValueError]) -> pa.RecordBatchReader:
    """The chunks as one stream of record batches, each chunk validated when the reader reaches it (its
    ValueError is also appended to ``errors``: the write reports it wrapped)."""
    first = next(chunks, None)
    if first is None:
        raise ValueError(f"table {spec.name}: no chunks to write")
    first = spec.validate(first)

    def batches() -> Iterator[pa.RecordBatch]:
        yield from first.to_batches()
        for chunk in chunks:
            try:
                valid = spec.validate(chunk)
            except ValueError as exc:
                errors.append(exc)
                raise
            yield from valid.to_batches()
    return pa.RecordBatchReader.from_batches(first.schema, batches())
