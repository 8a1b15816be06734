"""Daily item counts stream each day's events in batches and equal a group-by over all the events."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from stages.ingest import synthetic
from stages.ingest.tables import ingest
from stages.model import item_popularity
from stages.warehouse.facade import Warehouse


def test_daily_counts_read_in_batches_equal_a_group_by(tmp_path, monkeypatch):
    wh = Warehouse(str(tmp_path))
    cfg = synthetic.Config(users=200, items=40, categories=4, days=4, seed=5)
    ingest("synthetic", synthetic.generate(cfg), wh, days_only=False, started=0.0)
    events = wh.read("events", columns=["item_id", "ds"])
    grouped = events.group_by(["ds", "item_id"]).aggregate([([], "count_all")])
    epoch = {d: (dt.date.fromisoformat(d) - dt.date(1970, 1, 1)).days for d in wh.partitions("events")}
    want = sorted(zip([epoch[d] for d in grouped.column("ds").to_pylist()], grouped.column("item_id").to_pylist(),
                      grouped.column("count_all").to_pylist()))
    seen: list[int] = []
    real = pa.compute.value_counts

    def spy(values):
        seen.append(len(values))
        return real(values)

    monkeypatch.setattr(item_popularity, "READ_ROWS", 64)
    monkeypatch.setattr(item_popularity.pc, "value_counts", spy)
    day, item, count = item_popularity.daily_item_counts(wh, start=None, end="2000-01-04")
    assert sorted(zip(day.tolist(), item.tolist(), count.tolist())) == want
    assert max(seen) <= 64 and sum(seen) == events.num_rows  # every event counted, a batch at a time
    first = item_popularity.daily_item_counts(wh, start="2000-01-02", end="2000-01-03")[0]
    assert np.unique(first).tolist() == [epoch["2000-01-02"], epoch["2000-01-03"]]
