"""Delta per-file statistics from parquet footers, for commits of files delta-rs did not write.

``footer_stats`` gives an add action's ``stats`` (``numRecords``, ``minValues``, ``maxValues``, ``nullCount``,
as the Delta protocol defines them) from the footer's row-group statistics alone, so staged and Spark commits
let readers skip files like delta-rs' own writes do. Every bound is exact or absent: top-level primitive
columns among the first ``STATS_MAX_COLUMNS`` leaves; integers, finite floats, booleans, strings up to
``STRING_STATS_MAX_CHARS``, dates and UTC timestamps; min/max is left out when a row group with values lacks
it, ``nullCount`` kept when every group reports it. ``ds`` is never in the files. Parquet min/max ignore NaN,
as delta-rs' own statistics do. ``FileStats`` is what an add action needs of one file besides its path: its
size and those stats, from the footer a writer got back (``recorded_stats``, no re-read) or read again.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

STATS_MAX_COLUMNS = 32  # Delta's default delta.dataSkippingNumIndexedCols: first 32 leaf columns
STRING_STATS_MAX_CHARS = 32  # longer bounds are dropped, not truncated (a truncated max is not a bound)
PARTITION_COLUMNS = ("ds",)  # never in the data files; excluded even if a writer left them there
_INT_TYPES = ("NONE", "INT")  # INT32/INT64 without a logical type or with Int(bitWidth, signed)


def _json_bound(value: Any, physical: str, logical: pq.ParquetLogicalType) -> Any:
    """The Delta JSON form of one footer min/max, or None when the type is not recorded."""
    kind = logical.type
    if physical in ("INT32", "INT64") and kind in _INT_TYPES:
        return None if '"isSigned":false' in logical.to_json().replace(" ", "") else int(value)
    if physical in ("FLOAT", "DOUBLE") and kind == "NONE":
        return float(value) if math.isfinite(value) else None
    if physical == "BOOLEAN":
        return bool(value)
    if physical == "BYTE_ARRAY" and kind == "STRING":
        return value if isinstance(value, str) and len(value) <= STRING_STATS_MAX_CHARS else None
    if physical == "INT32" and kind == "DATE" and isinstance(value, dt.date):
        return value.isoformat()
    if physical == "INT64" and kind == "TIMESTAMP":
        meta = logical.to_json()
        if '"isAdjustedToUTC":true' not in meta.replace(" ", "") or "nanoseconds" in meta:
            return None  # local timestamps need timestampNtz; ns would lose precision in the string
        if isinstance(value, dt.datetime):
            utc = value.astimezone(dt.UTC).replace(tzinfo=None)
            return utc.isoformat(timespec="microseconds") + "Z"
    return None


def footer_stats(meta: pq.FileMetaData, *, exclude: Sequence[str] = PARTITION_COLUMNS) -> dict:
    """Delta stats dict of one parquet file from its footer: numRecords, minValues, maxValues, nullCount.

    Cost: reads the footer only (``meta``); O(columns x row groups). ``exclude``: column names never
    recorded (the partition columns).
    """
    lo: dict[str, Any] = {}
    hi: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    for i in range(min(meta.num_columns, STATS_MAX_COLUMNS)):
        column = meta.schema.column(i)
        if column.path != column.name or column.max_repetition_level > 0 or column.name in exclude:
            continue  # nested (list/struct/fixed-size list leaf) or a partition column
        chunks = [(meta.row_group(g).column(i).statistics, meta.row_group(g).num_rows)
                  for g in range(meta.num_row_groups)]
        if any(st is None for st, _ in chunks):
            continue
        if all(st.has_null_count for st, _ in chunks):
            nulls[column.name] = int(sum(st.null_count for st, _ in chunks))
        valued = [st for st, rows in chunks if not (st.has_null_count and st.null_count >= rows)]
        if not valued or any(not st.has_min_max for st in valued):
            continue  # all null (nullCount says so) or a group without bounds: no min/max
        low = [_json_bound(st.min, column.physical_type, column.logical_type) for st in valued]
        high = [_json_bound(st.max, column.physical_type, column.logical_type) for st in valued]
        if any(v is None for v in low + high):
            continue
        lo[column.name], hi[column.name] = min(low), max(high)  # ISO strings sort like their times
    return {"numRecords": int(meta.num_rows), "minValues": lo, "maxValues": hi, "nullCount": nulls}


@dataclass(frozen=True)
class FileStats:
    """One data file's size in bytes and its Delta ``stats`` (``footer_stats``' dict)."""

    size: int
    stats: dict

    def to_json(self) -> dict:
        return {"size": self.size, "stats": self.stats}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FileStats:
        """``to_json``'s dict back; ValueError naming the field when a field is missing or of the wrong type."""
        size, stats = data.get("size"), data.get("stats")
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"file stats: size must be an int >= 0, got {size!r}")
        if not isinstance(stats, dict) or not isinstance(stats.get("numRecords"), int):
            raise ValueError(f"file stats: stats must hold an int numRecords, got {stats!r}")
        return cls(size=size, stats=stats)


def recorded_stats(meta: pq.FileMetaData, size: int, *, exclude: Sequence[str] = PARTITION_COLUMNS) -> FileStats:
    """``FileStats`` of a file just written: ``meta`` is the footer its writer returned (``metadata_collector``)."""
    return FileStats(size=int(size), stats=footer_stats(meta, exclude=exclude))
