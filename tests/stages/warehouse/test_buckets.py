"""The bucket reader (stages.warehouse.buckets): a worker opens only its buckets' files, never yields another
worker's user, streams in (bucket, user_id) order, and falls back to read-all-and-filter, logged."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from stages.core.hashing import bucket_of, shard_of
from stages.sequences import incremental
from stages.warehouse import buckets
from stages.warehouse.facade import Warehouse
from tests.stages.bucket_fixtures import spy_opened, synthetic_sequences, write_bucketed

DS = "2001-02-03"
COLUMNS = ["user_id", "conditions", "item_ids"]


@pytest.fixture
def opened(monkeypatch):
    """The bucket of every file the bucketed read opens, in order."""
    return spy_opened(monkeypatch)


def test_record_keys_match_the_sequences_build_record():
    keys = (buckets.RECORD_DS, buckets.RECORD_BUCKETS)
    assert keys == (f"{incremental.RECORD}ds", f"{incremental.RECORD}buckets")


def test_worker_reads_only_its_buckets_in_bucket_then_user_order(warehouse, opened):
    table = write_bucketed(warehouse, synthetic_sequences(200), ds=DS, buckets=8)
    wh = Warehouse(warehouse)
    lay = buckets.layout(wh, DS)
    assert lay.reason is None and lay.buckets == 8 and sorted(lay.files) == list(range(8))
    assert sum(lay.rows.values()) == 200
    seen_users = []
    for index in range(4):
        opened.clear()
        batches = list(buckets.iter_bucket_batches(wh, DS, index=index, count=4, columns=COLUMNS, batch_rows=7))
        assert opened == [index, index + 4]  # 2 of the 8 files
        assert all(b.num_rows <= 7 and b.schema.names == COLUMNS for b in batches)
        got = pa.Table.from_batches(batches)
        uids = got.column("user_id").to_numpy()
        assert (shard_of(uids, 4) == index).all()  # never another worker's user
        order = np.lexsort((uids, bucket_of(uids, 8)))
        assert (order == np.arange(len(uids))).all()  # (bucket, user_id) order
        assert pa.types.is_dictionary(got.schema.field("conditions").type.value_type)
        want = table.filter(pa.array(shard_of(table.column("user_id").to_numpy(), 4) == index))
        assert sorted(got.column("conditions").to_pylist()) == sorted(want.column("conditions").to_pylist())
        seen_users += uids.tolist()
    assert sorted(seen_users) == sorted(table.column("user_id").to_pylist())  # every user exactly once


def test_merged_streams_are_in_user_order_and_complete(warehouse):
    table = write_bucketed(warehouse, synthetic_sequences(150, seed=1), ds=DS, buckets=4)
    wh = Warehouse(warehouse)
    streams = buckets.bucket_streams(wh, buckets.layout(wh, DS), index=0, count=1, columns=COLUMNS, batch_rows=5)
    chunks = list(buckets.merged_by_user([s for _, s in streams], 16))
    assert [c.num_rows for c in chunks[:-1]] == [16] * (len(chunks) - 1)
    uids = np.concatenate([c.column("user_id").to_numpy() for c in chunks])
    assert (np.diff(uids) > 0).all() and len(uids) == table.num_rows
    merged = pa.concat_tables(chunks).combine_chunks()
    assert merged.column("conditions").to_pylist() == table.sort_by("user_id").column("conditions").to_pylist()


@pytest.mark.parametrize("case", ["old_partition", "count_not_dividing"])
def test_fallback_reads_everything_and_filters_with_one_log_line(warehouse, opened, caplog, case):
    table = synthetic_sequences(60, seed=2)
    if case == "old_partition":
        Warehouse(warehouse).write_partition("user_sequences", table, ds=DS)  # no bucket, no record
        count, why = 2, "no recorded bucket count"
    else:
        write_bucketed(warehouse, table, ds=DS, buckets=4)
        count, why = 3, "3 workers do not divide buckets=4"
    caplog.set_level(logging.INFO, logger="stages.warehouse.buckets")
    caplog.clear()  # the writes above log too
    got = pa.Table.from_batches(list(buckets.iter_bucket_batches(
        Warehouse(warehouse), DS, index=1, count=count, columns=["ds", *COLUMNS], batch_rows=1000)))
    assert not opened  # no bucket file opened on its own
    mine = [r.getMessage() for r in caplog.records if r.name == "stages.warehouse.buckets"]
    assert len(mine) == 1 and why in mine[0]
    uids = got.column("user_id").to_numpy()
    want = np.sort(table.column("user_id").to_numpy()[shard_of(table.column("user_id").to_numpy(), count) == 1])
    assert np.array_equal(np.sort(uids), want) and set(got.column("ds").to_pylist()) == {DS}
    assert pa.types.is_dictionary(got.schema.field("conditions").type.value_type)


def test_foreign_rows_in_a_bucket_file_are_refused(warehouse):
    table = synthetic_sequences(40, seed=3)
    write_bucketed(warehouse, table, ds=DS, buckets=2)
    wh = Warehouse(warehouse)
    lay = buckets.layout(wh, DS)
    # a file the log calls bucket 0 but holding bucket 1's rows: a writer bug must not reach a worker
    swapped = buckets.BucketLayout(ds=DS, version=lay.version, buckets=2, files={0: lay.files[1]}, rows={0: 1},
                                   paths=lay.paths, reason=None)
    streams = buckets.bucket_streams(wh, swapped, index=0, count=1, columns=COLUMNS, batch_rows=100)
    with pytest.raises(ValueError, match="bucket 0 holds user .* of another bucket"):
        list(streams[0][1])


def test_bad_worker_arguments(warehouse):
    write_bucketed(warehouse, synthetic_sequences(10), ds=DS, buckets=2)
    with pytest.raises(ValueError, match="0 <= index < count"):
        list(buckets.iter_bucket_batches(Warehouse(warehouse), DS, index=2, count=2, columns=COLUMNS, batch_rows=4))
    with pytest.raises(ValueError, match="no partition ds=2001-02-04"):
        list(buckets.iter_bucket_batches(Warehouse(warehouse), "2001-02-04", index=0, count=1, columns=COLUMNS,
                                         batch_rows=4))


def test_a_bucket_file_is_read_in_pieces_not_a_column_chunk_at_once(tmp_path):
    path = str(tmp_path / "one-group.parquet")
    values = np.random.default_rng(0).integers(0, 1 << 62, 2_000_000)  # 16 MB that do not compress
    pq.write_table(pa.table({"user_id": values}), path, row_group_size=len(values), compression="none",
                   use_dictionary=False)
    with pafs.LocalFileSystem().open_input_file(path) as handle:
        pf = buckets.open_parquet(handle, dictionary=False)
        before = pa.total_allocated_bytes()
        batches = pf.iter_batches(batch_size=1000)
        first = next(batches)
        held = pa.total_allocated_bytes() - before
        assert first.num_rows == 1000
        assert held < 4 * buckets.READ_BUFFER < 8_000_000  # not the 16 MB column chunk


def test_a_bucket_file_of_several_row_groups_streams_whole(warehouse):
    # the per-bucket sequences write makes a row group per ~16 MiB, each with its own conditions dictionary:
    # a batch spanning two groups stopped Arrow ("Nested data conversions not implemented for chunked array
    # outputs") in infer's first 3M-user run on such files
    table = write_bucketed(warehouse, synthetic_sequences(120, seed=4), ds=DS, buckets=2)
    wh = Warehouse(warehouse)
    lay = buckets.layout(wh, DS)
    path = f"{wh.table_uri('user_sequences')}/{lay.files[0]}"
    rows = pq.read_table(path)
    with pq.ParquetWriter(path, rows.schema, use_dictionary=["conditions.list.element"]) as writer:
        for start in (0, 17, 40):  # three row groups of 17, 23 and the rest
            writer.write_table(rows.slice(start, {0: 17, 17: 23}.get(start, rows.num_rows)))
    assert pq.ParquetFile(path).metadata.num_row_groups == 3
    got = pa.Table.from_batches(list(buckets.iter_bucket_batches(wh, DS, index=0, count=2, columns=COLUMNS,
                                                                 batch_rows=10)))
    assert got.column("user_id").to_pylist() == rows.column("user_id").to_pylist()
    assert got.column("conditions").to_pylist() == rows.column("conditions").to_pylist()
    streams = buckets.bucket_streams(wh, lay, index=0, count=1, columns=COLUMNS, batch_rows=10)
    merged = pa.concat_tables(buckets.merged_by_user([s for _, s in streams], 32))  # as infer's chunks
    want = table.sort_by("user_id")
    assert merged.column("user_id").to_pylist() == want.column("user_id").to_pylist()
    assert merged.column("conditions").to_pylist() == want.column("conditions").to_pylist()
