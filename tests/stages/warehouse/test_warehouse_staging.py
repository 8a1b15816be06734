"""Staged writes: shards -> ONE commit; missing shards and foreign files refused; retries no-ops;
vacuum removes files of failed runs."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

import schemas
from stages.warehouse.facade import Warehouse
from stages.warehouse.staging import staging_dir

DAY = "2000-12-02"


def knowledge(users: list[int], dim: int = 4) -> pa.Table:
    n = len(users)
    return pa.table({
        "user_id": pa.array(users, pa.int64()),
        "condition": ["category=Comedy"] * n,
        "embedding": [[float(u) + j / 10 for j in range(dim)] for u in users],
        "model_version": ["lum-2000-12-01"] * n,
        "history_len": pa.array([u % 7 for u in users], pa.int32()),
    })


def stage(wh: Warehouse, run_id: str, shards: dict[int, list[list[int]]], n: int, ds: str = DAY,
          file_bytes: int | None = None) -> None:
    for shard, chunks in shards.items():
        stager = wh.stage_partition("user_knowledge", ds=ds, run_id=run_id, shard=f"{shard}/{n}",
                                    file_bytes=file_bytes)
        for chunk in chunks:
            stager.write(knowledge(chunk))
        stager.finish()


def sorted_rows(table: pa.Table) -> list[dict]:
    return sorted(table.to_pylist(), key=lambda r: r["user_id"])


def test_two_shards_equal_one_write(tmp_path):
    single, staged = Warehouse(str(tmp_path / "a")), Warehouse(str(tmp_path / "b"))
    single.write_partition("user_knowledge", knowledge([1, 2, 3, 4, 5]), ds=DAY)
    stage(staged, "run-1", {0: [[1, 2], [3]], 1: [[4, 5]]}, n=2)
    assert not staged.exists("user_knowledge")  # nothing visible before the commit
    version = staged.commit_staged("user_knowledge", ds=DAY, run_id="run-1")
    assert version == 0
    assert sorted_rows(staged.read("user_knowledge")) == sorted_rows(single.read("user_knowledge"))
    assert staged.read("user_knowledge").schema == single.read("user_knowledge").schema


def test_commit_replaces_only_its_partition(warehouse):
    wh = Warehouse(warehouse)
    wh.write_partition("user_knowledge", knowledge([1, 2]), ds="2000-12-01")
    wh.write_partition("user_knowledge", knowledge([9]), ds=DAY)
    stage(wh, "r", {0: [[3]], 1: [[4]]}, n=2)
    wh.commit_staged("user_knowledge", ds=DAY, run_id="r")
    assert sorted(wh.read("user_knowledge", ds=DAY).column("user_id").to_pylist()) == [3, 4]
    assert sorted(wh.read("user_knowledge", ds="2000-12-01").column("user_id").to_pylist()) == [1, 2]


def test_missing_shard_refused(warehouse):
    wh = Warehouse(warehouse)
    wh.write_partition("user_knowledge", knowledge([9]), ds=DAY)
    stage(wh, "r", {0: [[1]], 2: [[3]]}, n=3)
    with pytest.raises(ValueError, match=r"manifest missing for shard\(s\) 1 of 3"):
        wh.commit_staged("user_knowledge", ds=DAY, run_id="r")
    with pytest.raises(ValueError, match="shard counts disagree"):
        wh.commit_staged("user_knowledge", ds=DAY, run_id="r", shards=2)
    assert wh.version("user_knowledge") == 0
    assert wh.read("user_knowledge").column("user_id").to_pylist() == [9]


def test_no_manifest_at_all_refused(warehouse):
    wh = Warehouse(warehouse)
    with pytest.raises(ValueError, match="manifest missing"):
        wh.commit_staged("user_knowledge", ds=DAY, run_id="never-staged")
    assert not wh.exists("user_knowledge")


def test_file_outside_partition_refused(warehouse):
    wh = Warehouse(warehouse)
    wh.write_partition("user_knowledge", knowledge([9]), ds=DAY)
    stage(wh, "r", {0: [[1]]}, n=1, ds="2000-12-03")
    # move the manifest of day 12-03 into day 12-02's run folder: its files belong to another day
    src = Path(staging_dir(wh, "user_knowledge", "2000-12-03", "r"))
    dst = Path(staging_dir(wh, "user_knowledge", DAY, "r"))
    dst.mkdir(parents=True)
    (src / "shard-0-of-1.json").rename(dst / "shard-0-of-1.json")
    with pytest.raises(ValueError, match="belongs to partition 2000-12-03, not 2000-12-02"):
        wh.commit_staged("user_knowledge", ds=DAY, run_id="r")
    manifest = json.loads((dst / "shard-0-of-1.json").read_text())
    manifest["ds"] = DAY  # lie about the day: the file still lies in ds=2000-12-03/
    (dst / "shard-0-of-1.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="outside partition ds=2000-12-02"):
        wh.commit_staged("user_knowledge", ds=DAY, run_id="r")
    assert wh.version("user_knowledge") == 0


def test_retried_commit_applies_once(warehouse):
    wh = Warehouse(warehouse)
    stage(wh, "r1", {0: [[1, 2]], 1: [[3]]}, n=2)
    v1 = wh.commit_staged("user_knowledge", ds=DAY, run_id="r1")
    v2 = wh.commit_staged("user_knowledge", ds=DAY, run_id="r1")
    assert v1 == v2 == wh.version("user_knowledge")
    assert len(wh.history("user_knowledge")) == 1
    # a newer run replaces the day; replaying the old run's commit afterwards changes nothing
    wh.write_partition("user_knowledge", knowledge([7]), ds=DAY)
    v3 = wh.commit_staged("user_knowledge", ds=DAY, run_id="r1")
    assert v3 == v1 + 1
    assert wh.read("user_knowledge").column("user_id").to_pylist() == [7]


def test_stager_validates_each_chunk(warehouse):
    wh = Warehouse(warehouse)
    stager = wh.stage_partition("user_knowledge", ds=DAY, run_id="r")
    with pytest.raises(ValueError, match="duplicated"):
        stager.write(knowledge([1, 1]))
    with pytest.raises(ValueError, match="shard must be"):
        wh.stage_partition("user_knowledge", ds=DAY, run_id="r", shard="2/2")
    with pytest.raises(ValueError, match="run_id"):
        wh.stage_partition("user_knowledge", ds=DAY, run_id="a/b")
    with pytest.raises(ValueError, match="not partitioned"):
        wh.stage_partition("items", ds=DAY, run_id="r")


def test_vacuum_removes_files_of_a_failed_run(warehouse):
    wh = Warehouse(warehouse)
    wh.write_partition("user_knowledge", knowledge([1, 2]), ds=DAY)
    before = wh.read("user_knowledge")
    stray = wh.stage_partition("user_knowledge", ds=DAY, run_id="crashed")
    stray.write(knowledge([5, 6]))  # the run dies here: no manifest, no commit
    stray_path = Path(wh.table_uri("user_knowledge")) / stray.files[0]["path"]
    assert stray_path.exists()
    assert wh.vacuum("user_knowledge") == []  # the default retention (168 h) spares in-flight files
    listed = wh.vacuum("user_knowledge", dry_run=True, retention_hours=0)
    assert stray.files[0]["path"] in listed and stray_path.exists()
    removed = wh.vacuum("user_knowledge", retention_hours=0)
    assert stray.files[0]["path"] in removed and not stray_path.exists()
    assert sorted_rows(wh.read("user_knowledge")) == sorted_rows(before)


@pytest.mark.parametrize("file_bytes", [None, 1 << 30])  # one file per chunk, or chunks sharing big files
@pytest.mark.parametrize("layout", [
    {0: [[1, 2], [3, 2]]},         # two chunks of one shard share user 2
    {0: [[1, 2], [2, 3]]},         # ... with the second chunk starting at the first one's last user
    {0: [[1, 5]], 1: [[2, 5, 9]]},  # two shards share user 5
])
def test_key_shared_across_chunks_or_shards_refused_at_commit(warehouse, layout, file_bytes):
    wh = Warehouse(warehouse)
    wh.write_partition("user_knowledge", knowledge([7]), ds=DAY)
    stage(wh, "r", layout, n=len(layout), file_bytes=file_bytes)  # each chunk is unique: written without complaint
    with pytest.raises(ValueError) as info:
        wh.commit_staged("user_knowledge", ds=DAY, run_id="r")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"table user_knowledge ds={DAY} run r: key (user_id, condition) appears 2 times")
    assert "user_id=" in message and "refusing to commit" in message
    assert wh.version("user_knowledge") == 0
    assert wh.read("user_knowledge").column("user_id").to_pylist() == [7]


def test_overlapping_shards_without_shared_keys_commit(warehouse, monkeypatch):
    from stages.warehouse import keys

    monkeypatch.setattr(keys, "KEY_CHECK_ROWS", 2)  # several passes (rows split by user_id % passes)
    wh = Warehouse(warehouse)
    stage(wh, "ok", {0: [[1, 3, 5]], 1: [[2, 4, 6]]}, n=2)  # ranges overlap, keys do not
    wh.commit_staged("user_knowledge", ds=DAY, run_id="ok")
    assert sorted(wh.read("user_knowledge").column("user_id").to_pylist()) == [1, 2, 3, 4, 5, 6]
    stage(wh, "dup", {0: [[1, 3, 5]], 1: [[2, 4, 6, 5]]}, n=2)
    with pytest.raises(ValueError, match="user_id=5, condition='category=Comedy'; refusing"):
        wh.commit_staged("user_knowledge", ds=DAY, run_id="dup")
    assert wh.version("user_knowledge") == 0


def test_sorted_chunks_share_files_up_to_file_bytes(warehouse):
    """Chunks that continue the file's user order are appended until the file holds file_bytes; a chunk that
    does not (or a full file) starts the next file. The table is the same either way."""
    wh = Warehouse(warehouse)
    chunks = [[1, 2], [3, 4], [5, 6], [8, 9], [7], [10, 11]]   # [7] goes back below the open file's 9
    chunk_bytes = schemas.get("user_knowledge").SPEC.validate(knowledge([1, 2]), ds=DAY, dim=None).drop_columns(
        ["ds"]).nbytes   # what the stager counts: the validated chunk as written
    stager = wh.stage_partition("user_knowledge", ds=DAY, run_id="big", file_bytes=3 * chunk_bytes)
    for chunk in chunks:
        stager.write(knowledge(chunk))
    stager.finish()
    # [1,2]+[3,4]+[5,6] reach the size; [8,9] starts a file; [7] cannot follow 9; [10,11] follows 7
    assert [(f["key_min"], f["key_max"], f["rows"]) for f in stager.files] == [(1, 6, 6), (8, 9, 2), (7, 11, 3)]
    wh.commit_staged("user_knowledge", ds=DAY, run_id="big")
    assert len(wh.delta_table("user_knowledge").file_uris()) == 3
    assert sorted(wh.read("user_knowledge").column("user_id").to_pylist()) == list(range(1, 12))
    with pytest.raises(ValueError, match="file_bytes must be >= 1"):
        wh.stage_partition("user_knowledge", ds=DAY, run_id="x", file_bytes=0)


def test_disjoint_chunks_are_not_read_at_commit(warehouse, monkeypatch):
    from stages.warehouse import keys

    wh = Warehouse(warehouse)
    stage(wh, "r", {0: [[1, 2], [3, 4]], 1: [[5, 6]]}, n=2)
    monkeypatch.setattr(keys.pq, "read_table", lambda *a, **k: pytest.fail("disjoint files need no key read"))
    wh.commit_staged("user_knowledge", ds=DAY, run_id="r")
    assert wh.read("user_knowledge").num_rows == 6


def test_missing_staged_file_refused_at_commit(warehouse):
    wh = Warehouse(warehouse)
    stage(wh, "r", {0: [[1, 3]], 1: [[2, 4]]}, n=2)  # overlapping ranges: the key check opens both files
    manifest = json.loads(Path(staging_dir(wh, "user_knowledge", DAY, "r"), "shard-1-of-2.json").read_text())
    Path(wh.table_uri("user_knowledge"), manifest["files"][0]["path"]).unlink()
    with pytest.raises(ValueError, match=rf"staged file {manifest['files'][0]['path']} is unreadable"):
        wh.commit_staged("user_knowledge", ds=DAY, run_id="r")
    assert not wh.exists("user_knowledge")
