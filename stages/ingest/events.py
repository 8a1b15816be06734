"""A user's own event log (``lum ingest events --path FILE``): parquet or CSV -> ``events`` etc.

Columns: ``user_id``, ``item_id`` (int64), ``ts``, ``scenario`` (string) are required; ``rating`` (float, null =
implicit feedback), ``event_idx`` (int64; default: the row's position in the file) and ``ds`` (must equal the
UTC day of ts) are optional; any other column is an error, so a typo is never dropped silently. ``ts``: a
parquet timestamp (naive = UTC), epoch numbers or numeric strings (unit from the largest value: below 1e11
seconds, 1e14 milliseconds, 1e17 microseconds, else nanoseconds) or ISO-8601 strings (offsets converted, none =
UTC); a null or unparseable value is an error naming the first bad row.
The file replaces the days it contains in ``events`` and ``dlrm_samples`` (rated rows become samples, label =
rating >= 4; two rated scenarios of one (user, item, ts) are refused as duplicate samples); ``items`` and
``users`` gain a row per new id (item category ``unknown``, user attributes null). Read whole into memory.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import csv

import schemas
from stages.ingest.tables import day_of, ingest
from stages.warehouse.facade import Warehouse

log = logging.getLogger(__name__)

REQUIRED = ("user_id", "item_id", "ts", "scenario")
OPTIONAL = ("rating", "event_idx", "ds")
UNKNOWN_CATEGORY = "unknown"  # category of items first seen in an events file


def read_file(path: str) -> pa.Table:
    """The raw table of a ``.parquet``/``.pq`` or ``.csv`` file (CSV ``ts`` is kept as text)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"events file not found: {path}")
    suffix = p.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pq.read_table(p)
        if suffix == ".csv":
            convert = csv.ConvertOptions(column_types={"ts": pa.string()}, null_values=[""],
                                         strings_can_be_null=True)  # an empty cell is null, in every column
            return csv.read_csv(p, convert_options=convert)
    except (pa.ArrowInvalid, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"events file {path} cannot be read: {first}") from None
    raise ValueError(f"events file must end in .parquet, .pq or .csv, got {p.name}")


def _epoch_to_us(values: np.ndarray) -> np.ndarray:
    """Epoch numbers in one unit (chosen from the largest magnitude) -> int64 microseconds."""
    biggest = float(np.max(np.abs(values))) if len(values) else 0.0
    scale = 1e6 if biggest < 1e11 else 1e3 if biggest < 1e14 else 1.0 if biggest < 1e17 else 1e-3
    return np.rint(values.astype(np.float64) * scale).astype(np.int64)


def parse_ts(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Any supported ``ts`` column -> ``timestamp[us, UTC]``; ValueError naming the first bad row."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.null_count:
        row = pc.index(pc.is_null(column), True).as_py()
        raise ValueError(f"events file: column ts has {column.null_count} null value(s), first at row {row}")
    target = pa.timestamp("us", tz="UTC")
    dtype = column.type
    if pa.types.is_timestamp(dtype) or pa.types.is_date(dtype):
        if pa.types.is_timestamp(dtype) and dtype.tz is None:
            column = column.cast(pa.timestamp(dtype.unit, tz="UTC"))  # tz-naive: the values are UTC
        return column.cast(target)
    if pa.types.is_integer(dtype) or pa.types.is_floating(dtype):
        return pa.array(_epoch_to_us(column.to_numpy(zero_copy_only=False)), target)
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        text = pc.utf8_trim_whitespace(column)
        if pc.all(pc.match_substring_regex(text, r"^-?\d+(\.\d+)?$")).as_py():
            return pa.array(_epoch_to_us(pc.cast(text, pa.float64()).to_numpy()), target)
        strings = pd.Series(text.to_pylist(), dtype=object)
        # Parse strings with and without a UTC offset apart: pandas applies one string's offset to
        # the naive strings of a mixed column; naive strings must mean UTC.
        has_offset = strings.str.contains(r"(?:Z|[+-]\d{2}:?\d{2})$", regex=True).to_numpy()
        parsed = pd.Series(pd.NaT, index=strings.index, dtype="datetime64[us, UTC]")
        for mask in (has_offset, ~has_offset):
            if mask.any():
                part = pd.to_datetime(strings[mask], utc=True, format="ISO8601", errors="coerce")
                parsed[mask] = part.dt.as_unit("us")
        bad = parsed.isna().to_numpy()
        if bad.any():
            row = int(np.argmax(bad))
            raise ValueError(f"events file: column ts has {int(bad.sum())} unparseable timestamp(s), "
                             f"first at row {row}: {text[row].as_py()!r}")
        return pa.array(parsed.dt.as_unit("us"), target)
    raise ValueError(f"events file: column ts has type {dtype}; "
                     "expected a timestamp, epoch number or ISO string")


def events_from_raw(raw: pa.Table) -> pa.Table:
    """The ``events`` table (validated, sorted by ts then event_idx) from a raw file table."""
    missing = [c for c in REQUIRED if c not in raw.column_names]
    if missing:
        raise ValueError(f"events file: missing column(s) {', '.join(missing)}; "
                         f"required: {', '.join(REQUIRED)}")
    unknown = [c for c in raw.column_names if c not in REQUIRED + OPTIONAL]
    if unknown:
        raise ValueError(f"events file: unknown column(s) {', '.join(unknown)}; "
                         f"allowed: {', '.join(REQUIRED + OPTIONAL)}")
    if raw.num_rows == 0:
        raise ValueError("events file: no rows")
    ts = parse_ts(raw.column("ts"))
    ds = day_of(ts)
    if "ds" in raw.column_names:
        given = pc.cast(raw.column("ds"), pa.string())
        differs = pc.fill_null(pc.not_equal(given, ds), True)
        if pc.any(differs).as_py():
            row = pc.index(differs, True).as_py()
            raise ValueError(f"events file: column ds disagrees with the UTC day of ts at row {row}: "
                             f"{given[row].as_py()!r} vs {ds[row].as_py()!r}")
    n = raw.num_rows
    columns = {
        "user_id": raw.column("user_id"), "item_id": raw.column("item_id"), "ts": ts,
        "scenario": raw.column("scenario"),
        "rating": raw.column("rating") if "rating" in raw.column_names else pa.nulls(n, pa.float32()),
        "event_idx": raw.column("event_idx") if "event_idx" in raw.column_names
        else pa.array(np.arange(n, dtype=np.int64)),
        "ds": ds,
    }
    events = schemas.get("events").validate(pa.table(columns))
    empty = pc.equal(pc.utf8_length(events.column("scenario")), 0)
    if pc.any(empty).as_py():
        raise ValueError(f"events file: column scenario has empty value(s), first at row "
                         f"{pc.index(empty, True).as_py()}")
    return events.sort_by([("ts", "ascending"), ("event_idx", "ascending")])


def _extend(existing: pa.Table | None, new: pa.Table, key: str) -> pa.Table:
    """``existing`` rows plus the rows of ``new`` whose key is not in ``existing``, sorted by key."""
    if existing is None or existing.num_rows == 0:
        return new.sort_by(key)
    fresh = new.filter(pc.invert(pc.is_in(new.column(key), value_set=existing.column(key))))
    return pa.concat_tables([existing, fresh.cast(existing.schema)]).sort_by(key)


def dimension_rows(events: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Placeholder ``items`` and ``users`` rows for every id in ``events``."""
    item_ids = pc.unique(events.column("item_id")).sort()
    user_ids = pc.unique(events.column("user_id")).sort()
    n_items, n_users = len(item_ids), len(user_ids)
    items = pa.table({
        "item_id": item_ids, "title": pa.nulls(n_items, pa.string()),
        "category": pa.array([UNKNOWN_CATEGORY] * n_items, pa.string()),
        "categories": pa.array([[UNKNOWN_CATEGORY]] * n_items, pa.list_(pa.string())),
    })
    users = pa.table({
        "user_id": user_ids, "source_id": pc.cast(user_ids, pa.string()),
        "age": pa.nulls(n_users, pa.int32()), "gender": pa.nulls(n_users, pa.string()),
        "occupation": pa.nulls(n_users, pa.string()),
    })
    return items, users


def read_events_source(path: str, wh: Warehouse) -> dict[str, pa.Table]:
    """``{"events", "items", "users"}`` for an events file; items/users = warehouse rows + new ids."""
    events = events_from_raw(read_file(path))
    new_items, new_users = dimension_rows(events)
    out = {"events": events}
    for name, new, key in (("items", new_items, "item_id"), ("users", new_users, "user_id")):
        spec = schemas.get(name)
        existing = spec.validate(wh.read(name)) if wh.exists(name) else None
        out[name] = _extend(existing, spec.validate(new), key)
    log.info("events file %s: %d events over %d days", path, events.num_rows,
             len(pc.unique(events.column("ds"))))
    return out


@dataclass(frozen=True)
class Config:
    """Options of ``lum ingest events``."""

    path: str = ""  # the events file (.parquet, .pq or .csv); required, no default file exists

    def check(self) -> None:
        if not self.path:
            raise ValueError("ingest events: --path FILE (parquet or CSV) is required")


def run(cfg: Config, *, warehouse: Warehouse | str | None) -> dict[str, Any]:
    """Replace the file's days in the fact tables, extend items/users; returns the ingest summary."""
    cfg.check()
    wh = Warehouse.of(warehouse)
    started = time.perf_counter()
    return ingest("events", read_events_source(cfg.path, wh), wh, days_only=True, started=started)
