"""Infer over a bucketed user_sequences partition: a shard opens only its buckets' files, chunks come in
user_id order without spilling, and user_knowledge equals the one read from an unbucketed partition."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_infer import DS, partition_files, publish_model, read_sorted, write_items, write_sequences

from stages.infer import chunks
from stages.infer.stage import Config, run
from stages.warehouse import buckets
from stages.warehouse.facade import Warehouse
from tests.stages.bucket_fixtures import spy_opened, write_bucketed

COLUMNS = ["user_id", "condition", "history_len", "model_version", "condition_logprob"]


@pytest.fixture
def plain_and_bucketed(warehouse, copy_warehouse):
    """The same 40 users as an unbucketed partition (``plain``) and in 4 buckets (``bucketed``)."""
    publish_model(warehouse)
    write_items(warehouse)
    table = write_sequences(warehouse, n_users=40)
    bucketed = copy_warehouse(warehouse)
    write_bucketed(bucketed, table, ds=DS, buckets=4)
    return warehouse, bucketed


def _same_knowledge(a: str, b: str) -> None:
    left, right = read_sorted(a), read_sorted(b)
    assert left.num_rows == right.num_rows == 39 * 4
    assert left.select(COLUMNS) == right.select(COLUMNS)
    np.testing.assert_allclose(np.asarray(left.column("embedding").to_pylist()),
                               np.asarray(right.column("embedding").to_pylist()), atol=1e-6)


def test_unsharded_bucketed_equals_unbucketed_and_never_spills(plain_and_bucketed, monkeypatch, caplog):
    plain, bucketed = plain_and_bucketed
    run(Config(chunk_users=8), ds=DS, warehouse=plain)
    spilled = []
    monkeypatch.setattr(chunks, "user_ordered_chunks", lambda *a, **k: spilled.append(1) or iter(()))
    caplog.set_level(logging.INFO, logger="stages.warehouse.buckets")
    caplog.clear()  # the plain run above logs its fallback
    summary = run(Config(chunk_users=8), ds=DS, warehouse=bucketed)
    assert not spilled and not [r for r in caplog.records if "reading every file" in r.getMessage()]
    assert summary["users_read"] == 40
    _same_knowledge(plain, bucketed)
    # files in user_id order with disjoint ranges, as an unbucketed unsharded run writes them
    ranges = sorted((f.min(), f.max()) for f in (pq.read_table(p, columns=["user_id"]).column("user_id").to_numpy()
                                                  for p in _files(bucketed)))
    assert all(hi < lo for (_, hi), (lo, _) in zip(ranges, ranges[1:]))


def _files(warehouse: str) -> list[str]:
    return [p.removeprefix("file://") for p in partition_files(warehouse)]


def test_shards_open_only_their_buckets_and_commit_the_same_knowledge(plain_and_bucketed, monkeypatch):
    plain, bucketed = plain_and_bucketed
    run(Config(chunk_users=8), ds=DS, warehouse=plain)
    opened = spy_opened(monkeypatch)
    for shard in (0, 1):
        opened.clear()
        summary = run(Config(chunk_users=8, shard=f"{shard}/2"), ds=DS, warehouse=bucketed)
        assert sorted(opened) == [shard, shard + 2]  # 2 of the 4 bucket files
        assert summary["users_read"] == sum(buckets.layout(Warehouse(bucketed), DS).rows[b]
                                            for b in (shard, shard + 2))
    run(Config(shard="commit/2"), ds=DS, warehouse=bucketed)
    _same_knowledge(plain, bucketed)


def test_shard_count_not_dividing_buckets_falls_back_logged(plain_and_bucketed, caplog):
    plain, bucketed = plain_and_bucketed
    run(Config(chunk_users=8), ds=DS, warehouse=plain)
    caplog.set_level(logging.INFO, logger="stages.infer.chunks")
    for shard in range(3):
        run(Config(chunk_users=8, shard=f"{shard}/3"), ds=DS, warehouse=bucketed)
    run(Config(shard="commit/3"), ds=DS, warehouse=bucketed)
    assert "3 workers do not divide buckets=4" in caplog.text
    _same_knowledge(plain, bucketed)
