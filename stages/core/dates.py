"""The partition day ``ds``: a ``YYYY-MM-DD`` string naming one UTC day."""

from __future__ import annotations

import datetime as dt
import re

_DS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_ds(ds: str, *, name: str = "ds") -> dt.date:
    """Parse and validate a ``YYYY-MM-DD`` day; raises ``ValueError`` naming the argument."""
    if not isinstance(ds, str) or not _DS_RE.match(ds):
        raise ValueError(f"{name} must be YYYY-MM-DD, got {ds!r}")
    try:
        return dt.date.fromisoformat(ds)
    except ValueError:
        raise ValueError(f"{name} is not a calendar day: {ds!r}") from None


def check_ds(ds: str, *, name: str = "ds") -> str:
    parse_ds(ds, name=name)
    return ds


def day_range(start: str, end: str) -> list[str]:
    """All days from start to end inclusive, in order."""
    a, b = parse_ds(start, name="start"), parse_ds(end, name="end")
    if b < a:
        raise ValueError(f"end {end} is before start {start}")
    return [(a + dt.timedelta(days=i)).isoformat() for i in range((b - a).days + 1)]


def days_before(ds: str, days: int) -> str:
    """The day ``days`` days before ``ds`` (YYYY-MM-DD)."""
    return (parse_ds(ds) - dt.timedelta(days=days)).isoformat()


def prev_day(ds: str) -> str:
    return days_before(ds, 1)


def next_day(ds: str) -> str:
    return (parse_ds(ds) + dt.timedelta(days=1)).isoformat()


def day_end(ds: str) -> dt.datetime:
    """The first instant after day ``ds`` (UTC): events of day ds have ts < day_end(ds)."""
    d = parse_ds(ds)
    return dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC) + dt.timedelta(days=1)
