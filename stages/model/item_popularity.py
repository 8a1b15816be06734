"""Daily item counts from ``events`` -> the ``Popularity`` table (and item ages) a time-aware LUM trains and
infers with.

Each day's events are streamed in batches of ``READ_ROWS`` rows (item_id only) and reduced to (day, item, count)
triples, so memory holds a batch and the distinct (day, item) pairs, never the events.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow.compute as pc
from deltalake import DeltaTable

from stages.core.dates import days_before, parse_ds, prev_day
from stages.model.timefeat import Popularity, build_popularity, first_event_days
from stages.warehouse.facade import Warehouse
from stages.warehouse.reads import partition_filters, pyarrow_dataset

READ_ROWS = 1 << 20  # event rows read at once


def _epoch_day(ds: str) -> int:
    return (parse_ds(ds) - dt.date(1970, 1, 1)).days


def _day_counts(events: DeltaTable, ds: str) -> tuple[np.ndarray, np.ndarray]:
    """(item_id, count) of every item with events in partition ds, the events streamed in batches."""
    dataset = pyarrow_dataset(events, partition_filters(ds, None, None))
    items, counts = np.zeros(0, np.int64), np.zeros(0, np.int64)
    for batch in dataset.to_batches(columns=["item_id"], batch_size=READ_ROWS, batch_readahead=1,
                                    fragment_readahead=1):
        vc = pc.value_counts(batch.column("item_id"))
        items = np.concatenate([items, vc.field("values").to_numpy(zero_copy_only=False)])
        counts = np.concatenate([counts, pc.cast(vc.field("counts"), "int64").to_numpy()])
        items, inverse = np.unique(items, return_inverse=True)
        counts = np.bincount(inverse, weights=counts, minlength=len(items)).astype(np.int64)
    return items, counts


def daily_item_counts(wh: Warehouse, *, start: str | None, end: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(epoch day, item_id, count) of every (day, item) with events in partitions start .. end (None: all)."""
    version = wh.version("events")
    days = [d for d in wh.partitions("events", version) if d <= end and (start is None or d >= start)]
    events = wh.delta_table("events", version) if days else None
    out_d, out_i, out_c = [], [], []
    for ds in days:
        items, counts = _day_counts(events, ds)
        out_d.append(np.full(len(items), _epoch_day(ds), dtype=np.int64))
        out_i.append(items)
        out_c.append(counts)
    if not out_d:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_d), np.concatenate(out_i), np.concatenate(out_c)


def popularity_for(wh: Warehouse, vocab, *, first_ds: str, last_ds: str, window: int,
                   item_age: bool = False) -> Popularity:
    """Buckets of the vocabulary's item rows as of the start of each day first_ds .. last_ds (reads events of
    days first_ds - window .. last_ds - 1 only: a day's buckets never see the day itself). ``item_age``: also
    each row's first event day, which reads every events partition before last_ds (item_id only)."""
    start = None if item_age else days_before(first_ds, window)
    day, item, count = daily_item_counts(wh, start=start, end=prev_day(last_ds))
    rows = vocab.item_rows(item)
    pop = build_popularity(day, rows, count, n_item_rows=vocab.n_item_rows,
                           first_day=_epoch_day(first_ds), last_day=_epoch_day(last_ds), window=window)
    if item_age:
        pop.first_day = first_event_days(day, rows, vocab.n_item_rows)
    return pop

