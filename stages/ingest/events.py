"""A user's own event log (``lum ingest events --path FILE``): parquet, CSV or JSONL -> ``events`` etc., streamed.

Columns: ``user_id``, ``item_id`` (int64), ``ts``, ``scenario`` (string) are required; ``rating`` (float, null =
implicit feedback), ``event_idx`` (int64; default: the row's position in the file) and ``ds`` (must equal the
UTC day of ts) are optional; any other column is an error, so a typo is never dropped silently. ``ts``: a
parquet timestamp (naive = UTC), epoch numbers or numeric strings (unit from the largest value of the first
batch: below 1e11 seconds, 1e14 milliseconds, 1e17 microseconds, else nanoseconds; a later batch of another
magnitude is an error) or ISO-8601 strings ``YYYY-MM-DD[(T| )hh[:mm[:ss[.frac]]]][Z|+hh[:mm]]`` (offsets
converted, none = UTC). A JSONL file's first record fixes the JSON type of ``ts`` (string or number).
The file is read in batches of ``batch_rows`` rows (streaming readers: ``stages.ingest.readers``), each converted with vectorised kernels and validated, and staged per day (``stages.ingest.staged``): memory is
bounded by a few batches (plus one day's key columns for the cross-batch key check and the set of ids), not by
the file. A bad value is a one-line error naming the batch, the file row and the column; nothing is committed.
Then ``items`` and ``users`` gain a row per new id by merge (item category ``unknown``, user attributes null;
existing rows are kept), and ONE commit per table replaces the file's days in ``events`` and ``dlrm_samples``
(rated rows become samples, label = rating >= 4; two rated scenarios of one (user, item, ts) are refused).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import schemas
from stages.ingest.readers import first_line, open_batches
from stages.ingest.staged import FactWriter
from stages.ingest.tables import day_of, dlrm_samples_from_events
from stages.warehouse.facade import Warehouse

log = logging.getLogger(__name__)

REQUIRED = ("user_id", "item_id", "ts", "scenario")
OPTIONAL = ("rating", "event_idx", "ds")
UNKNOWN_CATEGORY = "unknown"  # category of items first seen in an events file
TS = pa.timestamp("us", tz="UTC")
_NUMERIC = r"^-?\d+(\.\d+)?$"
_WITH_OFFSET = r"^\d{4}-\d{2}-\d{2}[T ].*(?:Z|[+-]\d{2}(?::?\d{2})?)$"
_EPOCH_UNITS = {1e6: "seconds", 1e3: "milliseconds", 1.0: "microseconds", 1e-3: "nanoseconds"}


@dataclass(frozen=True)
class Config:
    """Options of ``lum ingest events``."""

    path: str = ""  # the events file (.parquet, .pq, .csv, .jsonl or .ndjson); required, no default file exists
    batch_rows: int = 250_000  # rows read, converted and validated at once: bounds the ingest's memory

    def check(self) -> None:
        if not self.path:
            raise ValueError("ingest events: --path FILE (parquet, CSV or JSONL) is required")
        if self.batch_rows < 1:
            raise ValueError(f"ingest events: batch_rows must be >= 1, got {self.batch_rows}")


def check_columns(names: list[str]) -> None:
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise ValueError(f"events file: missing column(s) {', '.join(missing)}; required: {', '.join(REQUIRED)}")
    unknown = [c for c in names if c not in REQUIRED + OPTIONAL]
    if unknown:
        raise ValueError(f"events file: unknown column(s) {', '.join(unknown)}; "
                         f"allowed: {', '.join(REQUIRED + OPTIONAL)}")


def _first_failure(n: int, ok: Callable[[int], bool]) -> int:
    """The first row i such that ``ok(i + 1)`` (the first i + 1 rows convert) is False, given ``ok(n)`` is."""
    good, bad = 0, n  # ok(good) holds, ok(bad) does not
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if ok(mid) else (good, mid)
    return bad - 1


def _casts(column: pa.Array, dtype: pa.DataType) -> bool:
    try:
        column.cast(dtype, safe=True)
        return True
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return False


def cast_column(name: str, column: pa.ChunkedArray | pa.Array, dtype: pa.DataType, first_row: int) -> pa.Array:
    """``column`` as ``dtype``; a value that does not convert is a ValueError naming it and its file row."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.type == dtype:
        return column
    try:
        return column.cast(dtype, safe=True)
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise ValueError(f"column {name} has type {column.type}, cannot cast to {dtype}: {first_line(exc)}") from None
    except pa.ArrowInvalid:
        row = _first_failure(len(column), lambda k: _casts(column.slice(0, k), dtype))
        raise ValueError(f"column {name} has type {column.type}, cannot cast {column[row].as_py()!r} at row "
                         f"{first_row + row} to {dtype}") from None


def _iso_or_none(text: pa.Array) -> pa.Array | None:
    """ISO-8601 strings -> timestamp[us, UTC] (an offset converted, none = UTC); None when one does not parse."""
    with_offset = pc.fill_null(pc.match_substring_regex(text, _WITH_OFFSET), False)
    null = pa.scalar(None, pa.string())
    parts = []
    for mask, dtype in ((with_offset, TS), (pc.invert(with_offset), pa.timestamp("us"))):
        strings = pc.if_else(mask, text, null)
        try:
            parsed = strings.cast(dtype)
        except pa.ArrowInvalid:  # finer than microseconds: parse as nanoseconds, truncate
            try:
                parsed = strings.cast(pa.timestamp("ns", tz=dtype.tz)).cast(dtype, safe=False)
            except pa.ArrowInvalid:
                return None
        parts.append(pc.cast(pc.cast(parsed, pa.int64()), TS))  # naive values are UTC
    return pc.coalesce(*parts)


class TimestampParser:
    """Any supported ``ts`` column -> ``timestamp[us, UTC]``, vectorised; the first epoch batch fixes the unit."""

    def __init__(self) -> None:
        self.scale: float | None = None  # epoch value -> microseconds

    def __call__(self, column: pa.ChunkedArray | pa.Array, first_row: int = 0) -> pa.Array:
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        if column.null_count:
            row = pc.index(pc.is_null(column), True).as_py()
            raise ValueError(f"column ts has {column.null_count} null value(s), first at row {first_row + row}")
        dtype = column.type
        if pa.types.is_timestamp(dtype) or pa.types.is_date(dtype):
            if pa.types.is_timestamp(dtype) and dtype.tz is None:
                column = column.cast(pa.timestamp(dtype.unit, tz="UTC"))  # tz-naive: the values are UTC
            return column.cast(TS)
        if pa.types.is_integer(dtype) or pa.types.is_floating(dtype):
            return self._epoch(column)
        if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
            text = pc.utf8_trim_whitespace(column)
            if pc.all(pc.match_substring_regex(text, _NUMERIC)).as_py():
                return self._epoch(pc.cast(text, pa.float64()))
            parsed = _iso_or_none(text)
            if parsed is None:
                row = _first_failure(len(text), lambda k: _iso_or_none(text.slice(0, k)) is not None)
                raise ValueError(f"column ts has an unparseable timestamp at row {first_row + row}: "
                                 f"{text[row].as_py()!r} (expected ISO-8601 or epoch numbers)")
            return parsed
        raise ValueError(f"column ts has type {dtype}; expected a timestamp, epoch number or ISO string")

    def _epoch(self, values: pa.Array) -> pa.Array:
        values = pc.cast(values, pa.float64())
        biggest = pc.max(pc.abs(values)).as_py() or 0.0
        scale = 1e6 if biggest < 1e11 else 1e3 if biggest < 1e14 else 1.0 if biggest < 1e17 else 1e-3
        if self.scale is None:
            self.scale = scale
        elif scale != self.scale:
            raise ValueError(f"column ts: epoch values in {_EPOCH_UNITS[scale]} after earlier batches in "
                             f"{_EPOCH_UNITS[self.scale]}")
        micros = pc.round(pc.multiply(values, self.scale))  # half to even, like numpy.rint
        return pc.cast(pc.cast(micros, pa.int64()), TS)


def parse_ts(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Any supported ``ts`` column -> ``timestamp[us, UTC]``; ValueError naming the first bad row."""
    return TimestampParser()(column)


def events_batch(raw: pa.Table, *, first_row: int, parse: TimestampParser) -> pa.Table:
    """The validated ``events`` rows of one batch whose first row is file row ``first_row``."""
    for name in ("user_id", "item_id", "scenario"):
        column = raw.column(name)
        if column.null_count:
            row = pc.index(pc.is_null(column), True).as_py()
            raise ValueError(f"column {name} has {column.null_count} null value(s), first at row {first_row + row}")
    ts = parse(raw.column("ts"), first_row)
    ds = day_of(ts)
    n = raw.num_rows
    if "ds" in raw.column_names:
        given = cast_column("ds", raw.column("ds"), pa.string(), first_row)
        differs = pc.fill_null(pc.not_equal(given, ds), True)
        if pc.any(differs).as_py():
            row = pc.index(differs, True).as_py()
            raise ValueError(f"column ds disagrees with the UTC day of ts at row {first_row + row}: "
                             f"{given[row].as_py()!r} vs {ds[row].as_py()!r}")
    optional = {"rating": pa.float32(), "event_idx": pa.int64()}
    columns = {name: cast_column(name, raw.column(name), dtype, first_row) for name, dtype in
               (("user_id", pa.int64()), ("item_id", pa.int64()), ("scenario", pa.string()),
                *[(c, t) for c, t in optional.items() if c in raw.column_names])}
    columns.setdefault("rating", pa.nulls(n, pa.float32()))
    columns.setdefault("event_idx", pa.array(np.arange(first_row, first_row + n, dtype=np.int64)))
    events = schemas.get("events").validate(pa.table({**columns, "ts": ts, "ds": ds}))
    empty = pc.equal(pc.utf8_length(events.column("scenario")), 0)
    if pc.any(empty).as_py():
        raise ValueError(f"column scenario has empty value(s), first at row {first_row + pc.index(empty, True).as_py()}")
    return events


class IdSet:
    """The distinct ids seen over many batches (memory: the distinct ids, compacted as they grow)."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []
        self.held = self.compacted = 0

    def add(self, column: pa.ChunkedArray | pa.Array) -> None:
        unique = pc.unique(column).to_numpy(zero_copy_only=False)
        self.parts.append(unique)
        self.held += len(unique)
        if self.held > 2 * max(self.compacted, 1 << 16):
            self.values()

    def values(self) -> np.ndarray:
        merged = np.unique(np.concatenate(self.parts)) if self.parts else np.zeros(0, np.int64)
        self.parts, self.held, self.compacted = [merged], len(merged), len(merged)
        return merged


def dimension_rows(item_ids: np.ndarray, user_ids: np.ndarray) -> tuple[pa.Table, pa.Table]:
    """Placeholder ``items`` and ``users`` rows for the given ids."""
    n_items, n_users = len(item_ids), len(user_ids)
    category = pa.repeat(pa.scalar(UNKNOWN_CATEGORY, pa.string()), n_items)
    items = pa.table({
        "item_id": pa.array(item_ids, pa.int64()), "title": pa.nulls(n_items, pa.string()), "category": category,
        "categories": pa.ListArray.from_arrays(pa.array(np.arange(n_items + 1, dtype=np.int32)), category),
    })
    users = pa.table({
        "user_id": pa.array(user_ids, pa.int64()), "source_id": pc.cast(pa.array(user_ids, pa.int64()), pa.string()),
        "age": pa.nulls(n_users, pa.int32()), "gender": pa.nulls(n_users, pa.string()),
        "occupation": pa.nulls(n_users, pa.string()),
    })
    return items, users


def run(cfg: Config, *, warehouse: Warehouse | str | None) -> dict[str, Any]:
    """Stream the file into staged days, merge new ids into items/users, ONE commit per fact table."""
    cfg.check()
    wh = Warehouse.of(warehouse)
    started = time.perf_counter()
    names, batches = open_batches(cfg.path, cfg.batch_rows)
    check_columns(names)
    writer = FactWriter(wh, f"ingest-events-{uuid.uuid4().hex[:12]}", file_rows=cfg.batch_rows)
    parse, item_ids, user_ids = TimestampParser(), IdSet(), IdSet()
    rows = 0
    try:
        for number, raw in enumerate(batches, 1):
            try:
                events = events_batch(raw, first_row=rows, parse=parse)
                samples = schemas.get("dlrm_samples").validate(dlrm_samples_from_events(events))
            except ValueError as exc:
                raise ValueError(f"events file {Path(cfg.path).name}, batch {number} (rows {rows}.."
                                 f"{rows + raw.num_rows - 1}): {first_line(exc)}") from None
            writer.add(events, samples)
            item_ids.add(events.column("item_id"))
            user_ids.add(events.column("user_id"))
            rows += raw.num_rows
        if rows == 0:
            raise ValueError(f"events file {Path(cfg.path).name}: no rows")
        writer.finish(check_keys=True)
        built = time.perf_counter()
        items, users = dimension_rows(item_ids.values(), user_ids.values())
        versions = {"items": wh.merge_table("items", items, update=False),
                    "users": wh.merge_table("users", users, update=False)}  # placeholders never replace rows
        versions.update(writer.commit(replace_all=False))
    except BaseException:
        writer.discard()
        raise
    counts = {name: wh.read(name, columns=[key]).num_rows for name, key in (("items", "item_id"), ("users", "user_id"))}
    return writer.summary("events", **counts, versions=versions, started=started, built=built,
                          finished=time.perf_counter())
