"""Time in the LUM: how long since the previous behaviour, and how popular each item is lately.

- Gap buckets (condition tokens): bucket 0 = no previous behaviour (a sequence's first, or no timestamps);
  else 1 + min(GAP_BUCKETS - 2, floor(log2(1 + seconds))). A query token at inference gets the gap from the
  user's last behaviour to the end of the knowledge day, so knowledge of day K knows how long the user has
  been away when it is used.
- Popularity buckets (items, per day): an item's share of all events in the ``window`` days strictly before
  day d; bucket 0 = no event, else 1 + min(POP_BUCKETS - 2, floor(-2 log2 share)) (half-octaves, so the
  buckets mean the same at any traffic). The model learns a per-query weight for each bucket (``pop_head``).
- Age buckets (items, per day, ``item_age``): days since the item's first event strictly before day d; bucket 0
  = no event yet, else 1 + min(AGE_BUCKETS - 2, floor(2 log2 days)) (half-octaves: 1 day .. about 5 years).
  Their weights follow the popularity weights in the same head, so a candidate's bonus is
  w[pop bucket] + w[POP_BUCKETS + age bucket] and its item_knowledge row is two-hot.
- ``Popularity`` is a dense (days, item rows) uint8 table: days x items bytes (a year of 1M items: 365 MB),
  plus one int64 first-event day per item row with ``item_age``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

GAP_BUCKETS = 32   # log2 seconds: 1 s .. decades, plus "no previous behaviour"
POP_BUCKETS = 48   # half-octaves of an item's share of the window's events, plus "no event"
AGE_BUCKETS = 24   # half-octaves of an item's age in days, plus "no event yet"
AGE_SATURATES = 1 << ((AGE_BUCKETS - 2) // 2)  # age in days from which every bucket is the last one
NO_EVENT_DAY = np.iinfo(np.int64).max // 4  # first-event day of an item row without events
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


def drift_width(item_age: bool) -> int:
    """Width of a time-aware model's drift weights (and of the item rows' multi-hot): popularity, then age."""
    return POP_BUCKETS + (AGE_BUCKETS if item_age else 0)


def age_buckets(age_days: torch.Tensor) -> torch.Tensor:
    """int64 age buckets of ages in days (< 1: no event before the day -> 0)."""
    a = age_days.to(torch.float64)
    b = 1 + torch.floor(2.0 * torch.log2(a.clamp_min(1.0))).to(torch.long).clamp(max=AGE_BUCKETS - 2)
    return torch.where(a >= 1, b, torch.zeros_like(b))


def first_event_days(day: np.ndarray, rows: np.ndarray, n_item_rows: int) -> np.ndarray:
    """(n_item_rows,) int64 first epoch day with an event of each item row (``NO_EVENT_DAY`` if none) from
    (day, item row) pairs; row 0 (OOV) never has one."""
    first = np.full(n_item_rows, NO_EVENT_DAY, dtype=np.int64)
    r = np.asarray(rows, dtype=np.int64)
    ok = (r > 0) & (r < n_item_rows)
    np.minimum.at(first, r[ok], np.asarray(day, dtype=np.int64)[ok])
    return first


@dataclass
class Popularity:
    """Popularity buckets of every item row as of the start of days ``day0 .. day0 + n_days - 1`` (epoch days);
    days outside the range use the nearest one. ``first_day`` (n_item_rows,) int64, set for models with
    ``item_age``: each row's first event day, giving the age buckets after the popularity ones."""

    day0: int
    buckets: np.ndarray  # (n_days, n_item_rows) uint8
    window: int
    first_day: np.ndarray | None = None

    @property
    def width(self) -> int:
        return drift_width(self.first_day is not None)

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

    def columns(self, epoch_days: torch.Tensor, rows: torch.Tensor) -> list[torch.Tensor]:
        """Per bucket family, (P, C) int64 indices into the drift weights (popularity, then age at offset
        POP_BUCKETS) of item ``rows`` (C,) on each of ``epoch_days`` (P,)."""
        out = [self.at(epoch_days, rows)]
        if self.first_day is not None:
            table = self._ages(rows.device)
            d = (epoch_days.to(rows.device, torch.long) - self.day0).clamp(0, self.n_days - 1)
            out.append(POP_BUCKETS + table[d[:, None], rows[None, :]].long())
        return out

    def bias(self, weights: torch.Tensor, epoch_days: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(P, C) logit bonus of candidates ``rows`` (C,) for queries with drift ``weights`` (P, width) asked
        on ``epoch_days`` (P,): the sum of each family's weight of the candidate's bucket."""
        idx = self.columns(epoch_days, rows)
        out = weights.gather(1, idx[0])
        for more in idx[1:]:
            out = out + weights.gather(1, more)
        return out

    def item_features(self, day_index: int = 0) -> np.ndarray:
        """(n_item_rows, width) float32 multi-hot of every item row's buckets on day ``day0 + day_index``: the
        item side of <[o, T w], [e_i, features]> / T = <o, e_i> / T + the bias above."""
        rows = torch.arange(self.buckets.shape[1])
        days = torch.tensor([self.day0 + day_index])
        out = np.zeros((len(rows), self.width), dtype=np.float32)
        for idx in self.columns(days, rows):
            out[np.arange(len(rows)), idx[0].numpy()] = 1.0
        return out

    def _ages(self, device) -> torch.Tensor:
        """(n_days, n_item_rows) uint8 age buckets, built once (same size as ``buckets``)."""
        cached = getattr(self, "_age_tensor", None)
        if cached is None:  # one day at a time through a lookup of every age up to where the buckets saturate
            lut = age_buckets(torch.arange(AGE_SATURATES + 1)).to(torch.uint8)
            first = torch.from_numpy(np.asarray(self.first_day, np.int64))
            cached = torch.empty((self.n_days, len(first)), dtype=torch.uint8)
            for i in range(self.n_days):
                cached[i] = lut[(self.day0 + i - first).clamp(0, AGE_SATURATES)]
        if cached.device != torch.device(device):
            cached = cached.to(device)
        self._age_tensor = cached
        return cached

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
