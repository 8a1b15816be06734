"""Daily item counts from ``events`` -> the ``Popularity`` table a time-aware LUM trains and infers with.

Events are read one range of ``READ_DAYS`` partitions at a time (item_id and ds only) and reduced to
(day, item, count) triples, so memory holds the distinct (day, item) pairs, never the events.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow.compute as pc

from stages.core.dates import days_before, parse_ds, prev_day
from stages.model.timefeat import Popularity, build_popularity
from stages.warehouse.facade import Warehouse

READ_DAYS = 31  # event partitions read at once


def _epoch_day(ds: str) -> int:
    return (parse_ds(ds) - dt.date(1970, 1, 1)).days


def daily_item_counts(wh: Warehouse, *, start: str | None, end: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(epoch day, item_id, count) of every (day, item) with events in partitions start .. end (None: all)."""
    days = [d for d in wh.partitions("events") if d <= end and (start is None or d >= start)]
    out_d, out_i, out_c = [], [], []
    for k in range(0, len(days), READ_DAYS):
        part = days[k:k + READ_DAYS]
        t = wh.read("events", start=part[0], end=part[-1], columns=["item_id", "ds"])
        if t.num_rows == 0:
            continue
        g = t.group_by(["ds", "item_id"]).aggregate([([], "count_all")])
        ds_values = g.column("ds").to_numpy(zero_copy_only=False)
        uniq, inv = np.unique(ds_values, return_inverse=True)
        out_d.append(np.asarray([_epoch_day(d) for d in uniq], dtype=np.int64)[inv])
        out_i.append(g.column("item_id").to_numpy())
        out_c.append(pc.cast(g.column("count_all"), "int64").to_numpy())
    if not out_d:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_d), np.concatenate(out_i), np.concatenate(out_c)


def popularity_for(wh: Warehouse, vocab, *, first_ds: str, last_ds: str, window: int) -> Popularity:
    """Buckets of the vocabulary's item rows as of the start of each day first_ds .. last_ds (reads events of
    days first_ds - window .. last_ds - 1 only: a day's buckets never see the day itself)."""
    day, item, count = daily_item_counts(wh, start=days_before(first_ds, window), end=prev_day(last_ds))
    return build_popularity(day, vocab.item_rows(item), count, n_item_rows=vocab.n_item_rows,
                            first_day=_epoch_day(first_ds), last_day=_epoch_day(last_ds), window=window)

