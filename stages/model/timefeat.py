"""Time in the LUM: how long since the previous behaviour, and how popular each item is lately.

- Gap buckets (condition tokens): bucket 0 = no previous behaviour (a sequence's first, or no timestamps);
  else 1 + min(GAP_BUCKETS - 2, floor(log2(1 + seconds))). A query token at inference gets the gap from the
  user's last behaviour to the end of the knowledge day, so knowledge of day K knows how long the user has
  been away when it is used.
- Popularity buckets (items, per day): an item's share of all events in the ``window`` days strictly before
  day d; bucket 0 = no event, else 1 + min(POP_BUCKETS - 2, floor(-2 log2 share)) (half-octaves, so the
  buckets mean the same at any traffic). The model learns a per-query weight for each bucket (``pop_head``).
- ``Popularity`` is a dense (days, item rows) uint8 table: days x items bytes (a year of 1M items: 365 MB).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

GAP_BUCKETS = 32   # log2 seconds: 1 s .. decades, plus "no previous behaviour"
POP_BUCKETS = 48   # half-octaves of an item's share of the window's events, plus "no event"
SECONDS_PER_DAY = 86_400


def gap_buckets(ts: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """(N,) int64 bucket of the gap before each behaviour of packed sequences: ts (N,) int64 epoch seconds,
    cu_seqlens (B+1,) offsets; the first behaviour of each sequence gets 0."""
    cu = cu_seqlens.to(device=ts.device, dtype=torch.long)
    prev = torch.cat([ts[:1], ts[:-1]])
    out = gap_bucket_of(ts - prev)
    starts = cu[:-1][cu[1:] > cu[:-1]]
    out[starts] = 0
    return out


def gap_bucket_of(seconds: torch.Tensor) -> torch.Tensor:
    """Bucket (>= 1) of gaps in seconds (negative gaps count as 0 s)."""
    s = seconds.to(torch.float64).clamp_min(0.0)
    return (1 + torch.floor(torch.log2(1.0 + s)).to(torch.long)).clamp(max=GAP_BUCKETS - 1)


def share_buckets(counts: np.ndarray) -> np.ndarray:
    """(..., I) event counts in a window -> (..., I) uint8 popularity buckets (shares along the last axis)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(total > 0, counts / np.maximum(total, 1.0), 0.0)
        b = 1 + np.minimum(POP_BUCKETS - 2, np.floor(-2.0 * np.log2(np.where(share > 0, share, 1.0))))
    return np.where(counts > 0, b, 0).astype(np.uint8)


@dataclass
class Popularity:
    """Popularity buckets of every item row as of the start of days ``day0 .. day0 + n_days - 1`` (epoch days);
    days outside the range use the nearest one."""

    day0: int
    buckets: np.ndarray  # (n_days, n_item_rows) uint8
    window: int

    @property
    def n_days(self) -> int:
        return int(self.buckets.shape[0])

    def day_index(self, epoch_days: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(epoch_days, dtype=np.int64) - self.day0, 0, self.n_days - 1)

    def at(self, epoch_days: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(P, C) int64 buckets of item ``rows`` (C,) as of the start of each of ``epoch_days`` (P,)."""
        table = self.tensor(rows.device)
        d = (epoch_days.to(rows.device, torch.long) - self.day0).clamp(0, self.n_days - 1)
        return table[d[:, None], rows[None, :]].long()

    def tensor(self, device) -> torch.Tensor:
        cached = getattr(self, "_tensor", None)
        if cached is None or cached.device != torch.device(device):
            cached = torch.from_numpy(self.buckets).to(device)
            self._tensor = cached
        return cached


def build_popularity(day: np.ndarray, rows: np.ndarray, counts: np.ndarray, *, n_item_rows: int,
                     first_day: int, last_day: int, window: int) -> Popularity:
    """``Popularity`` for days first_day .. last_day (epoch days, inclusive) from daily counts: (day, item row,
    count) triples (any order, days outside the range ignored). Day d's buckets count days d - window .. d - 1."""
    if window < 1 or last_day < first_day:
        raise ValueError(f"build_popularity: window {window} must be >= 1 and days {first_day}..{last_day} ordered")
    n_days = last_day - first_day + 1
    base = first_day - window                                       # counts of days base .. last_day matter
    span = last_day - base + 1
    daily = np.zeros((span + 1, n_item_rows), dtype=np.float32)     # row k + 1: events of day base + k
    d = np.asarray(day, dtype=np.int64) - base
    r = np.asarray(rows, dtype=np.int64)
    ok = (d >= 0) & (d < span) & (r > 0) & (r < n_item_rows)
    np.add.at(daily, (d[ok] + 1, r[ok]), np.asarray(counts, dtype=np.float32)[ok])
    cum = np.cumsum(daily, axis=0, dtype=np.float64)                # cum[k] = events of days base .. base + k - 1
    k = np.arange(n_days) + window                                  # day first_day + i is base + window + i
    win = cum[k] - cum[k - window]
    return Popularity(day0=first_day, buckets=share_buckets(win), window=window)


def epoch_day(ts_seconds: np.ndarray | torch.Tensor):
    """Epoch day (UTC) of epoch seconds."""
    return ts_seconds // SECONDS_PER_DAY
