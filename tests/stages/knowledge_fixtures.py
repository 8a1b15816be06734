"""A hand-built warehouse whose next-item answers are known: items, events, user/item knowledge of day K.

30 items: 1..15 in category A, 16..30 in B; item 30 has no item_knowledge row. e_i is the one-hot axis i - 1,
so <o, e_i> = o[i - 1]. Users 1..4 have knowledge on K; 1..3 and 5 act after K (5 has no knowledge, 4 does not
act). Each of users 1..3 has o(u, c) = e_target under the target's category and most of its condition
probability there, so the knowledge ranks the target first. What popularity gives is worked out in
tests/stages/evaluate/test_evaluate_knowledge.py.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from stages.warehouse.facade import Warehouse

K = "2000-01-31"
DIM = 30
T = 0.05
TARGETS = {1: 2, 2: 3, 3: 25}  # user -> first item after K
SEEN = {1: [1, 16], 2: [1, 2, 17], 3: [20], 4: [5], 6: [1, 2, 3], 7: [1, 2], 8: [1], 9: [4]}


def category(item: int) -> str:
    return "A" if item <= 15 else "B"


def axis(i: int) -> np.ndarray:
    v = np.zeros(DIM, np.float32)
    v[i - 1] = 1.0
    return v


def _ts(day: str, hour: int = 10) -> dt.datetime:
    d = dt.date.fromisoformat(day)
    return dt.datetime(d.year, d.month, d.day, hour, tzinfo=dt.UTC)


def events() -> pa.Table:
    rows = []  # (user, item, day, event_idx)
    for user, items in SEEN.items():
        rows += [(user, item, "2000-01-10" if user <= 4 else "2000-01-15", 0) for item in items]
    rows.append((9, 25, "2000-01-01", 0))  # outside the 30-day popularity window, still seen history
    rows += [(1, 2, "2000-02-01", 100), (1, 3, "2000-02-01", 101),  # same ts: event_idx decides (item 2)
             (1, 16, "2000-02-03", 0), (2, 3, "2000-02-02", 0), (3, 25, "2000-02-01", 0), (5, 7, "2000-02-01", 0)]
    return pa.table({
        "user_id": pa.array([r[0] for r in rows], pa.int64()), "item_id": pa.array([r[1] for r in rows], pa.int64()),
        "ts": pa.array([_ts(r[2]) + dt.timedelta(seconds=r[1] if r[3] == 0 else 0) for r in rows],
                       pa.timestamp("us", tz="UTC")),
        "scenario": ["rating"] * len(rows), "rating": pa.array([4.0] * len(rows), pa.float32()),
        "event_idx": pa.array([r[3] for r in rows], pa.int64()), "ds": [r[2] for r in rows]})


def user_rows() -> list[tuple[int, str, np.ndarray, float]]:
    """(user, category, o(u, c), p(c | history)) of every knowledge row."""
    uniform_b = np.zeros(DIM, np.float32)
    uniform_b[15:29] = 1 / np.sqrt(14)
    return [(1, "A", axis(2), 0.9), (1, "B", uniform_b, 0.1),
            (2, "A", axis(3), 0.7), (2, "B", axis(16), 0.3),
            (3, "A", axis(1), 0.2), (3, "B", axis(25), 0.8),
            (4, "A", axis(5), 0.5), (4, "B", axis(20), 0.5)]


def knowledge_table(ds: str = K, *, with_logprob: bool = True) -> pa.Table:
    rows = user_rows()
    emb = np.stack([r[2] for r in rows])
    table = pa.table({
        "ds": [ds] * len(rows), "user_id": pa.array([r[0] for r in rows], pa.int64()),
        "condition": [f"category={r[1]}" for r in rows],
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), DIM),
        "model_version": ["lum-test"] * len(rows), "history_len": pa.array([2] * len(rows), pa.int32())})
    if with_logprob:
        table = table.append_column("condition_logprob", pa.array([np.log(r[3]) for r in rows], pa.float32()))
        table = table.append_column("temperature", pa.array([T] * len(rows), pa.float32()))
    return table


def write_knowledge_warehouse(path: str) -> Warehouse:
    wh = Warehouse(path)
    ids = list(range(1, 31))
    wh.write_table("items", pa.table({"item_id": pa.array(ids, pa.int64()), "title": [f"m{i}" for i in ids],
                                      "category": [category(i) for i in ids],
                                      "categories": [[category(i)] for i in ids]}))
    wh.write_full("events", events())
    known = ids[:-1]  # item 30: not in the model
    wh.write_partition("item_knowledge", pa.table({
        "item_id": pa.array(known, pa.int64()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(np.stack([axis(i) for i in known]).ravel()), DIM),
        "model_version": ["lum-test"] * len(known)}), ds=K)
    wh.write_partition("user_knowledge", knowledge_table(), ds=K)
    return wh
