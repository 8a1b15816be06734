"""Synthetic user_sequences/items written straight to a warehouse (no Spark): fast pretrain inputs.

Users follow a learnable pattern: user u cycles through a fixed run of items of one "home" category,
so a trained model beats chance at predicting the next item.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from stages.warehouse.facade import Warehouse

N_ITEMS, N_CATS = 40, 4


def write_items(wh: Warehouse) -> None:
    ids = list(range(1, N_ITEMS + 1))
    cats = [f"g{i % N_CATS}" for i in ids]
    wh.write_table("items", pa.table({"item_id": pa.array(ids, pa.int64()), "title": [f"t{i}" for i in ids],
                                      "category": cats, "categories": [[c] for c in cats]}))


def user_behaviours(u: int, n: int, start_day: dt.datetime) -> tuple[list[int], list[dt.datetime]]:
    home = u % N_CATS
    pool = [i for i in range(1, N_ITEMS + 1) if i % N_CATS == home]
    items = [pool[(u + k) % len(pool)] for k in range(n)]
    ts = [start_day + dt.timedelta(minutes=k) for k in range(n)]
    return items, ts


def write_sequences(wh: Warehouse, ds: str, users: dict[int, tuple[list[int], list[dt.datetime]]]) -> None:
    rows = {"ds": [], "user_id": [], "item_ids": [], "conditions": [], "ts": [], "ratings": [],
            "history_len": [], "total_events": []}
    for u, (items, ts) in sorted(users.items()):
        rows["ds"].append(ds)
        rows["user_id"].append(u)
        rows["item_ids"].append(items)
        rows["conditions"].append([f"category=g{i % N_CATS}" for i in items])
        rows["ts"].append(ts)
        rows["ratings"].append([4.0] * len(items))
        rows["history_len"].append(len(items))
        rows["total_events"].append(len(items))
    wh.write_partition("user_sequences", pa.table(rows), ds=ds)


def write_background_events(wh: Warehouse, base: dt.datetime, days: int = 5) -> None:
    """events of other users in the ``days`` days before ``base``, item i seen 1 + (7 i mod 13) times a day: the
    recent popularity a time-aware model reads (varied buckets, so its popularity weights get real gradients)."""
    rows = {"user_id": [], "item_id": [], "ts": [], "scenario": [], "rating": [], "event_idx": [], "ds": []}
    for d in range(1, days + 1):
        day = base - dt.timedelta(days=d)
        for item in range(1, N_ITEMS + 1):
            for k in range(1 + (7 * item) % 13):
                rows["user_id"].append(10_000 + k)
                rows["item_id"].append(item)
                rows["ts"].append(day + dt.timedelta(minutes=item, seconds=k))
                rows["scenario"].append("rating")
                rows["rating"].append(4.0)
                rows["event_idx"].append(len(rows["event_idx"]))
                rows["ds"].append(day.date().isoformat())
    wh.write_full("events", pa.table({**rows, "user_id": pa.array(rows["user_id"], pa.int64()),
                                      "item_id": pa.array(rows["item_id"], pa.int64()),
                                      "ts": pa.array(rows["ts"], pa.timestamp("us", tz="UTC")),
                                      "rating": pa.array(rows["rating"], pa.float32()),
                                      "event_idx": pa.array(rows["event_idx"], pa.int64())}))


def make_warehouse(path: str, *, users: int = 24, days: int = 2, per_day: int = 6) -> list[str]:
    """Items + user_sequences for ``days`` consecutive days; on day d only even users (d>0) get new events;
    background events before the first day (`write_background_events`)."""
    wh = Warehouse(path)
    write_items(wh)
    base = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    write_background_events(wh, base)
    out, lengths = [], {u: 1 + (u % 5) for u in range(users)}   # user 0 has a single behaviour
    for d in range(days):
        ds = (base + dt.timedelta(days=d)).date().isoformat()
        if d > 0:
            for u in range(0, users, 2):
                lengths[u] += per_day
        seqs = {u + 1: user_behaviours(u, n, base) for u, n in lengths.items()}
        if d > 0:  # move the changed users' newest behaviour into day d
            for u in range(0, users, 2):
                _, ts = seqs[u + 1]
                ts[-1] = base + dt.timedelta(days=d, hours=1)
        write_sequences(wh, ds, seqs)
        out.append(ds)
    return out


TINY = {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32, "d_item": 16, "d_feature": 4, "max_len": 16,
        "row_tokens": 64, "rows_per_step": 2, "sampled_negatives": 8, "warmup_steps": 2, "dropout": 0.1,
        "epochs": 2.0, "continue_epochs": 1.0, "checkpoint_every": 3}
