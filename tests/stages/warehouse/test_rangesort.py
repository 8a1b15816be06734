"""The external range sort behind maintain's clustering: same rows, sorted across files, files of about the
target size, the same result however many ranges, nothing committed when it fails or the partition changed."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.warehouse import rangesort
from stages.warehouse.facade import Warehouse

D = "2000-01-05"
DIM = 4
KEY = [("user_id", "ascending"), ("condition", "ascending")]


def knowledge(users: np.ndarray, conditions: int, seed: int) -> pa.Table:
    """``conditions`` rows per user (user 5, when present, gets 40: one user bigger than a range)."""
    per_user = np.where(users == 5, 40, conditions)
    ids = np.repeat(users, per_user)
    cond = np.concatenate([np.arange(k) for k in per_user])
    n = len(ids)
    rng = np.random.default_rng(seed)
    return pa.table({
        "ds": [D] * n, "user_id": pa.array(ids, pa.int64()), "condition": [f"category={c:02d}" for c in cond],
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(rng.standard_normal(n * DIM, dtype=np.float32)), DIM),
        "model_version": ["lum-x"] * n, "history_len": pa.array(np.arange(n) % 9, pa.int32())})


@pytest.fixture
def rwh(warehouse) -> Warehouse:
    """user_knowledge of D in 6 files of shuffled users (ranges overlap), 2,000 rows."""
    wh = Warehouse(warehouse)
    users = np.random.default_rng(0).permutation(np.arange(1, 491, dtype=np.int64))
    stager = wh.stage_partition("user_knowledge", ds=D, run_id="t")
    for i, part in enumerate(np.array_split(users, 6)):
        stager.write(knowledge(part, 4, i), row_group_size=50)
    stager.finish()
    wh.commit_staged("user_knowledge", ds=D, run_id="t")
    return wh


def partition_files(wh: Warehouse) -> list[str]:
    """The partition's files in name order (the order a sort writes them)."""
    return sorted(wh.delta_table("user_knowledge").file_uris([("ds", "=", D)]))


def cluster(wh: Warehouse, *, sort_bytes: int, target_size: int = 1 << 30) -> dict:
    return rangesort.cluster_partition(wh, "user_knowledge", ds=D, column="user_id", key=("user_id", "condition"),
                                       target_size=target_size, row_group_rows=64, compression="ZSTD",
                                       sort_bytes=sort_bytes, dictionary_page_bytes=4096)


def test_sorted_across_files_same_rows_files_of_the_target_size(rwh):
    before = rwh.read("user_knowledge").sort_by(KEY)
    version = rwh.version("user_knowledge")
    out = cluster(rwh, sort_bytes=40_000, target_size=16 << 10)
    assert out["ranges"] > 3 and out["rows"] == before.num_rows == 1996 and out["files_before"] == 6
    files = partition_files(rwh)
    assert len(files) == out["files_after"] > 1 and rwh.version("user_knowledge") == version + 1
    together = pa.concat_tables(pq.read_table(f) for f in files)
    ids, cond = together.column("user_id").to_numpy(), together.column("condition").to_pylist()
    assert (np.diff(ids) >= 0).all()  # sorted by user_id across files in file order, ties by condition
    assert all(cond[i] < cond[i + 1] for i in range(len(ids) - 1) if ids[i] == ids[i + 1])
    assert rwh.read("user_knowledge").sort_by(KEY).equals(before)  # the same rows
    sizes = [os.path.getsize(f) for f in files]
    assert all(s >= 16 << 10 for s in sizes[:-1]) and max(sizes) < (16 << 10) * 2  # about the target size
    groups = [m.row_group(g).num_rows for m in map(pq.read_metadata, files) for g in range(m.num_row_groups)]
    assert set(groups[:-1]) == {64} and 0 < groups[-1] <= 64  # full row groups across range boundaries
    log = rwh.delta_table("user_knowledge").get_add_actions(flatten=True)
    assert len(log) == len(files)


def test_many_small_ranges_give_the_files_one_range_gives(rwh, copy_warehouse, monkeypatch):
    other = Warehouse(copy_warehouse(rwh.uri))
    monkeypatch.setattr(rangesort, "MAX_OPEN_RANGES", 4)  # more ranges than open spill files: several scans
    scatter, on_disk = rangesort.scatter, []

    def counted(dataset, columns, column, bounds, folder, *args, **kwargs):  # spill files before and after a scan
        before = len(os.listdir(folder))
        written = scatter(dataset, columns, column, bounds, folder, *args, **kwargs)
        on_disk.append((before, len(os.listdir(folder)), len(written)))
        return written

    monkeypatch.setattr(rangesort, "scatter", counted)
    many = cluster(rwh, sort_bytes=20_000)
    assert len(on_disk) > 2  # one scan per window of 4 ranges
    assert all(before == 0 and 0 < after == written <= 4 for before, after, written in on_disk)  # disk: a window
    one = cluster(other, sort_bytes=1 << 30)
    assert many["ranges"] > 8 and one["ranges"] == 1
    content = [pa.concat_tables(pq.read_table(f) for f in partition_files(wh)) for wh in (rwh, other)]
    assert content[0].equals(content[1])
    assert os.listdir(f"{rwh.uri}/_staging/user_knowledge/{D}") == ["t"]  # the spill folders removed


def test_one_user_bigger_than_a_range_stays_in_one_range():
    sampled = np.sort(np.r_[np.full(500, 5), np.arange(1, 100)])
    bounds = rangesort.plan_bounds(sampled, rows=599, rows_per_range=50)
    assert len(bounds) == len(np.unique(bounds)) and 5 in bounds and 6 in bounds  # user 5 alone in its range
    assert rangesort.plan_bounds(sampled, rows=599, rows_per_range=10_000).size == 0


def test_a_failure_before_the_commit_leaves_the_table_and_a_rerun_sorts(rwh, monkeypatch):
    before = rwh.read("user_knowledge").sort_by(KEY)
    version, files = rwh.version("user_knowledge"), partition_files(rwh)

    def fail(*args, **kwargs):
        raise OSError("injected: killed before the commit")

    monkeypatch.setattr(rangesort, "commit_rewrite", fail)
    with pytest.raises(OSError, match="injected"):
        cluster(rwh, sort_bytes=20_000)
    assert rwh.version("user_knowledge") == version and partition_files(rwh) == files
    assert rwh.read("user_knowledge").sort_by(KEY).equals(before)
    assert os.listdir(f"{rwh.uri}/_staging/user_knowledge/{D}") == ["t"]  # the spill folder removed
    monkeypatch.undo()
    stale = f"{rwh.uri}/_staging/user_knowledge/{D}/{rangesort.SPILL_PREFIX}killed"  # as a SIGKILL leaves it
    os.makedirs(stale)
    open(f"{stale}/range-0.arrow", "wb").close()
    cluster(rwh, sort_bytes=20_000)
    assert rwh.version("user_knowledge") == version + 1 and rwh.read("user_knowledge").sort_by(KEY).equals(before)
    assert os.listdir(f"{rwh.uri}/_staging/user_knowledge/{D}") == ["t"]  # the killed run's spill removed too


def test_a_partition_changed_during_the_sort_is_an_error_and_commits_nothing(rwh, monkeypatch):
    real = rangesort.FileRoller.close

    def close_then_overwrite(self):
        real(self)
        rwh.write_partition("user_knowledge", knowledge(np.arange(1, 4, dtype=np.int64), 2, 9), ds=D)

    monkeypatch.setattr(rangesort.FileRoller, "close", close_then_overwrite)
    with pytest.raises(RuntimeError, match="changed while it was sorted"):
        cluster(rwh, sort_bytes=20_000)
    assert rwh.read("user_knowledge").num_rows == 6  # the concurrent write stands, no row lost or added


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_spill_is_compressed_in_few_large_writes_and_reads_back_the_same(codec, tmp_path):
    """Scan batches of 50 rows over 3 ranges: each range's rows are held and written in writes of up to
    SPILL_BATCH_ROWS, compressed by ``codec``; the files hold the same rows as an uncompressed spill's."""
    import pyarrow.dataset as pads

    table = knowledge(np.arange(1, 601, dtype=np.int64), 4, 0).drop_columns(["ds"])  # 2,436 rows (user 5: 40)
    table = table.set_column(3, "model_version", pa.array(["lum-x" * 20] * table.num_rows))  # compressible
    dataset = pads.dataset(table)
    bounds = np.array([200, 400])
    spilled = {}
    for name in ("none", codec):
        folder = tmp_path / name
        folder.mkdir()
        written = rangesort.scatter(dataset, table.column_names, "user_id", bounds, str(folder), 50, range(0, 3),
                                    codec=name, buffer_bytes=1 << 20, row_bytes=100)
        assert written == [0, 1, 2]
        files = [str(folder / f"{r:06d}.arrow") for r in written]
        readers = [pa.ipc.open_file(f) for f in files]
        assert [r.num_record_batches for r in readers] == [1, 1, 1]  # < SPILL_BATCH_ROWS rows a range: one write
        spilled[name] = (sum(os.path.getsize(f) for f in files), pa.concat_tables(r.read_all() for r in readers))
    assert spilled[codec][0] < 0.8 * spilled["none"][0]
    assert spilled[codec][1].equals(spilled["none"][1])
    assert spilled["none"][1].sort_by(KEY).equals(table.sort_by(KEY))
    small = tmp_path / "small"
    small.mkdir()  # a buffer of 3 x 100 rows' bytes: each scan batch's piece of a range is written at once
    rangesort.scatter(dataset, table.column_names, "user_id", bounds, str(small), 50, range(0, 3), codec=codec,
                      buffer_bytes=300, row_bytes=100)
    first = int((table["user_id"].to_numpy() < 200).sum())  # range 0: the table's first rows (sorted by user)
    assert pa.ipc.open_file(str(small / "000000.arrow")).num_record_batches == -(-first // 50)
    with pytest.raises(ValueError, match="spill codec must be one of lz4, zstd, none, got 'gzip'"):
        rangesort.scatter(dataset, table.column_names, "user_id", bounds, str(small), 50, range(0, 3), codec="gzip")
