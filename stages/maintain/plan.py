"""What ``lum run maintain --ds D`` will do, decided from its Config and partition lists alone (no I/O).

- ``KeepDays``: per table, the days kept before D (0 = keep everything, the default).
- ``check_config``: known, ds-partitioned, distinct tables; clustered tables among them; ``keep_days`` >= 0;
  a known compression; sizes >= 1. Every problem is a one-line ``ValueError`` raised before anything is touched.
- ``days_to_expire``: the partitions older than ``D - keep_days``, never the newest one before D (what a rerun
  of day D reads: D-1's sequences, the knowledge of the newest day before D) and never D or later.
- ``MARKER``: the table-configuration key recording the newest day maintained (``maintained_through``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import schemas
from stages.core.dates import check_ds, days_before
from stages.warehouse.rangesort import SPILL_CODECS

MARKER = "lum.maintained_through"  # table configuration: the newest day D whose maintenance finished
COMPRESSIONS = ("ZSTD", "LZ4_RAW", "SNAPPY", "UNCOMPRESSED")  # parquet codecs of rewritten files (Spark reads all)


@dataclass(frozen=True)
class KeepDays:
    """Days kept before D per table (``keep_days.user_knowledge = 30``); 0 = never expire."""

    events: int = 0
    user_sequences: int = 0
    user_knowledge: int = 0
    item_knowledge: int = 0
    dlrm_samples: int = 0
    dlrm_training: int = 0


PARTITIONED = tuple(f.name for f in dataclasses.fields(KeepDays))  # the tables maintain may touch


def check_config(cfg) -> None:
    """``ValueError`` (one line) for a table that is unknown, not ds-partitioned or listed twice, a clustered
    table not in ``tables``, a negative ``keep_days``, an unknown compression or spill codec, or a size < 1."""
    tables = list(cfg.tables)
    for name in tables + list(cfg.cluster):
        if name not in PARTITIONED:
            schemas.get(name)  # unknown table: names the known ones
            raise ValueError(f"table {name} is not partitioned by ds; maintain takes {', '.join(PARTITIONED)}")
    if len(set(tables)) != len(tables):
        raise ValueError(f"tables lists a table twice: {', '.join(tables)}")
    outside = [t for t in cfg.cluster if t not in tables]
    if outside:
        raise ValueError(f"cluster names {outside[0]}, which is not in tables ({', '.join(tables) or 'none'})")
    for name in PARTITIONED:
        days = getattr(cfg.keep_days, name)
        if isinstance(days, bool) or not isinstance(days, int) or days < 0:
            raise ValueError(f"keep_days.{name} must be an integer >= 0 (0 = never expire), got {days!r}")
    if cfg.compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {cfg.compression!r}")
    if cfg.spill_codec not in SPILL_CODECS:
        raise ValueError(f"spill_codec must be one of {', '.join(SPILL_CODECS)}, got {cfg.spill_codec!r}")
    for name in ("target_file_mb", "row_group_rows", "sort_mb"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")


def days_to_expire(partitions: Iterable[str], ds: str, keep_days: int) -> list[str]:
    """Partitions to delete on day ``ds``: those before ``ds - keep_days``, except the newest before ``ds``."""
    check_ds(ds)
    if keep_days == 0:
        return []
    days = sorted(partitions)
    newest_before = max((d for d in days if d < ds), default=None)
    cutoff = days_before(ds, keep_days)
    return [d for d in days if d < cutoff and d != newest_before]


def maintained_through(metadata: Mapping[str, str]) -> str | None:
    """The day ``MARKER`` records in a table configuration (None when absent)."""
    value = metadata.get(MARKER)
    return value or None
