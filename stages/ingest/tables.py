"""The four ingested tables: shared builders, validation and the write every source ends with.

Write semantics (every source): ``items``, ``users``, ``events`` and ``dlrm_samples`` are built and
validated against schemas/ FIRST; any problem raises a one-line ``ValueError`` before the first commit,
so bad input leaves the warehouse byte-for-byte unchanged. Then ``items`` and ``users`` are written
(one commit each) and ``events`` and ``dlrm_samples`` with ONE Delta commit each (not one per day: a data
set spans years of days):
- full data sets (MovieLens, synthetic) replace the tables: re-ingesting gives the same content.
- an events file replaces only the days (``ds`` partitions) it contains; items/users are merged.
MovieLens is built in memory and written by ``ingest`` here; synthetic data and events files are streamed
(validated batch by batch, staged per day, then committed: ``stages.ingest.staged``).
Limits: the four commits are not one transaction (Delta has none across tables); a crash between them
(after validation passed) can leave e.g. ``items`` new and ``events`` old. Rerun the ingest to repair.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import schemas
from stages.warehouse.facade import Warehouse

log = logging.getLogger(__name__)

TABLES = ("items", "users", "events", "dlrm_samples")  # write order: dimensions before facts
FACT_TABLES = ("events", "dlrm_samples")  # partitioned by ds

_US_PER_DAY = 86_400_000_000


def day_of(ts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """UTC day ``YYYY-MM-DD`` (string) of each ``timestamp[us, UTC]`` value."""
    micros = pc.cast(ts, pa.int64())
    if isinstance(micros, pa.ChunkedArray):
        micros = micros.combine_chunks()
    days = np.floor_divide(micros.to_numpy(zero_copy_only=False), _US_PER_DAY).astype(np.int32)
    # Format each distinct day once, then gather: far cheaper than casting every row's date to text.
    unique_days, inverse = np.unique(days, return_inverse=True)
    names = pc.cast(pa.array(unique_days, pa.date32()), pa.string())
    return pc.take(names, pa.array(inverse.astype(np.int32)))


def dlrm_samples_from_events(events: pa.Table) -> pa.Table:
    """Rated events as ranking samples: ``label = int(rating >= 4)``, same ds/user/item/ts/scenario.

    Events with a null rating (implicit feedback) give no sample.
    """
    rated = events.filter(pc.is_valid(events.column("rating")))
    rating = rated.column("rating")
    label = pc.cast(pc.greater_equal(rating, pa.scalar(4.0, pa.float32())), pa.int32())
    return pa.table({
        "ds": rated.column("ds"), "user_id": rated.column("user_id"), "item_id": rated.column("item_id"),
        "ts": rated.column("ts"), "label": label, "rating": rating, "scenario": rated.column("scenario"),
    })


def validate_tables(tables: Mapping[str, pa.Table]) -> dict[str, pa.Table]:
    """Validate (cast + check) every table against schemas/; raises on the first problem, writes nothing."""
    missing = [name for name in TABLES if name not in tables]
    if missing:
        raise ValueError(f"ingest: table(s) {', '.join(missing)} were not built")
    out = {name: schemas.get(name).validate(tables[name]) for name in TABLES}
    if out["events"].num_rows == 0:
        raise ValueError("ingest: no events to write")
    return out


def write_tables(tables: Mapping[str, pa.Table], wh: Warehouse, *, days_only: bool = False) -> dict[str, int]:
    """Validate all four tables, then write them (see module doc); returns each table's new version.

    ``days_only``: replace only the ``ds`` partitions present in ``events`` (events files) instead of
    the whole fact tables.
    """
    validated = validate_tables(tables)
    days = sorted(pc.unique(validated["events"].column("ds")).to_pylist()) if days_only else None
    versions: dict[str, int] = {}
    for name in TABLES:
        if name in FACT_TABLES:
            versions[name] = wh.write_full(name, validated[name], days=days)
        else:
            versions[name] = wh.write_table(name, validated[name])
    return versions


def ingest(source: str, tables: dict[str, pa.Table], wh: Warehouse, *, days_only: bool,
           started: float) -> dict[str, Any]:
    """Add ``dlrm_samples`` when the source did not build it, write the four tables, summarise.

    ``started``: ``time.perf_counter()`` when the source began building (for ``build_seconds``).
    Returns a JSON-able summary: source, rows per table, days, first/last ds, versions, seconds.
    """
    if "dlrm_samples" not in tables:
        tables["dlrm_samples"] = dlrm_samples_from_events(tables["events"])
    built = time.perf_counter()
    versions = write_tables(tables, wh, days_only=days_only)
    events = tables["events"]
    days = pc.unique(events.column("ds"))
    summary = {
        "source": source, "events": events.num_rows, "items": tables["items"].num_rows,
        "users": tables["users"].num_rows, "dlrm_samples": tables["dlrm_samples"].num_rows,
        "days": len(days), "first_ds": pc.min(days).as_py(), "last_ds": pc.max(days).as_py(),
        "versions": versions, "build_seconds": round(built - started, 3),
        "write_seconds": round(time.perf_counter() - built, 3),
    }
    log.info("ingest %s: %d events over %d days, %d items, %d users (build %.1fs, write %.1fs)", source,
             summary["events"], summary["days"], summary["items"], summary["users"],
             summary["build_seconds"], summary["write_seconds"])
    return summary
