"""The per-bucket merge of incremental user_sequences, in Arrow: against a list reference on random rows, across
batch boundaries, and its guards (a row of another bucket, a bucket never written)."""

from __future__ import annotations

import datetime as dt
import random

import numpy as np
import pyarrow as pa
import pytest

from stages.core.hashing import bucket_of
from stages.sequences import merge
from stages.warehouse.buckets import BucketLayout
from stages.warehouse.commit import DataFile
from stages.warehouse.stats import FileStats

EPOCH = dt.datetime(2003, 3, 1, tzinfo=dt.UTC)


def _side(rng: random.Random, users: list[int], base: int, longest: int) -> list[dict]:
    rows = []
    for u in users:
        n = rng.randint(1, longest)
        rows.append({"user_id": u, "item_ids": [base + u * 1000 + k for k in range(n)],
                     "conditions": [f"category=c{rng.randint(0, 3)}" for _ in range(n)],
                     "ts": [EPOCH + dt.timedelta(seconds=base + k) for k in range(n)],
                     "ratings": [None if rng.random() < 0.2 else float(rng.randint(1, 5)) for _ in range(n)],
                     "total_events": n + rng.randint(0, 5)})
    return rows


def _table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=merge._types())


def _reference(prev: list[dict], day: list[dict], max_len: int) -> list[dict]:
    p, d = {r["user_id"]: r for r in prev}, {r["user_id"]: r for r in day}
    out = []
    for u in sorted(set(p) | set(d)):
        a, b = p.get(u), d.get(u)
        row = {"user_id": u}
        for c in ("item_ids", "conditions", "ts", "ratings"):
            row[c] = ((a[c] if a else []) + (b[c] if b else []))[-max_len:]
        row["total_events"] = (a["total_events"] if a else 0) + (b["total_events"] if b else 0)
        row["history_len"] = len(row["item_ids"])
        out.append(row)
    return out


def _batches(rows: list[dict], size: int) -> list[pa.RecordBatch]:
    return [b for i in range(0, len(rows), size) for b in _table(rows[i:i + size]).to_batches()]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merged_rows_equal_the_list_reference_across_batch_boundaries(seed):
    rng = random.Random(seed)
    max_len = 6
    prev_users = sorted(rng.sample(range(1, 400), 120))
    day_users = sorted(rng.sample(range(1, 400), 80))  # some in both, some new, most of prev carried
    prev, day = _side(rng, prev_users, 0, max_len), _side(rng, day_users, 10**6, 9)  # day lists longer than max_len
    want = _reference(prev, day, max_len)
    whole = merge.merge_rows(_table(prev), _table(day), max_len=max_len)
    assert whole.to_pylist() == want
    for p_size, d_size in [(7, 3), (1, 50), (500, 1)]:  # many rounds, batches ending on either side first
        chunks = list(merge.merge_streams(_batches(prev, p_size), _batches(day, d_size), max_len=max_len))
        assert len(chunks) > 1
        assert pa.concat_tables(chunks).to_pylist() == want, (p_size, d_size)


def test_one_side_empty_or_both():
    rng = random.Random(5)
    rows = _side(rng, [3, 8, 9], 0, 4)
    for prev, day in [(rows, []), ([], rows)]:
        got = pa.concat_tables(merge.merge_streams(_batches(prev, 2), _batches(day, 2), max_len=3)).to_pylist()
        assert got == _reference(prev, day, 3)
    assert list(merge.merge_streams([], [], max_len=3)) == []
    assert merge.merge_rows(_table([]), _table([]), max_len=3).num_rows == 0


def _spark_batch(rows: list[dict], marker: bool = False) -> pa.RecordBatch:
    table = _table(rows)
    return table.append_column(merge.MARKER, pa.array([marker] * len(rows))).to_batches()[0]


def test_a_row_of_another_bucket_or_out_of_order_stops_the_task():
    users = np.arange(1, 200)
    b0 = [int(u) for u in users if bucket_of(np.array([u]), 4)[0] == 0]
    b1 = [int(u) for u in users if bucket_of(np.array([u]), 4)[0] == 1]
    rng = random.Random(1)
    good = list(merge._day_rows([_spark_batch(_side(rng, b0[:3], 0, 2))], 0, 4))
    assert [b.num_rows for b in good] == [3]
    with pytest.raises(RuntimeError, match=f"task of bucket 0 got user {b1[0]} of another bucket"):
        list(merge._day_rows([_spark_batch(_side(rng, [b0[0], b1[0]], 0, 2))], 0, 4))
    with pytest.raises(RuntimeError, match="rows out of user_id order"):
        list(merge._day_rows([_spark_batch(_side(rng, [b0[2], b0[1]], 0, 2))], 0, 4))


def test_a_bucket_of_the_previous_day_left_unwritten_commits_nothing():
    previous = BucketLayout(ds="2003-03-01", version=3, buckets=4, files={0: "a", 1: "b", 3: "c"},
                            rows={0: 1, 1: 1, 3: 1}, paths=["a", "b", "c"], reason=None)

    def written(*buckets_):
        return [(DataFile(relpath=f"f{b}", ds="2003-03-02"),
                 FileStats(size=1, stats={"numRecords": 1, "minValues": {"bucket": b}, "maxValues": {"bucket": b}}))
                for b in buckets_]

    merge.covers(previous)(written(0, 1, 2, 3))  # bucket 2 is new on the day: fine
    with pytest.raises(ValueError, match="bucket 3 of partition 2003-03-01 was not written .1 bucket"):
        merge.covers(previous)(written(0, 1, 2))
