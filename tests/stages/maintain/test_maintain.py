"""lum run maintain on hand-made tables: rows unchanged, idempotent, clustering, expiry, vacuum, checkpoint,
the lease, bad configs that change nothing, provenance records that survive a rewrite."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.maintain import plan
from stages.maintain import stage as maintain
from stages.pipeline import daily, registry
from stages.query.lookup import query_many, query_user_knowledge
from stages.warehouse import buckets, lease, maintenance, rangesort
from stages.warehouse.facade import Warehouse
from stages.warehouse.history import partition_record
from stages.warehouse.maintenance import layout
from tests.conftest import tree_snapshot
from tests.stages.bucket_fixtures import synthetic_sequences, write_bucketed

D = "2000-01-05"
DAYS = ("2000-01-01", "2000-01-02", "2000-01-03", "2000-01-04", D)
DIM = 4
CONDITIONS = ("category=A", "category=B")


def knowledge(users: np.ndarray, ds: str) -> pa.Table:
    n = len(users) * len(CONDITIONS)
    rng = np.random.default_rng(int(users[0]) + len(users))
    return pa.table({
        "ds": [ds] * n, "user_id": pa.array(np.repeat(users, len(CONDITIONS)), pa.int64()),
        "condition": list(CONDITIONS) * len(users),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(rng.standard_normal(n * DIM, dtype=np.float32)), DIM),
        "model_version": ["lum-x"] * n, "history_len": pa.array(np.arange(n) % 9, pa.int32())})


def training(users: np.ndarray, ds: str) -> pa.Table:
    n = len(users)
    rng = np.random.default_rng(n)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(rng.standard_normal(n * DIM, dtype=np.float32)), DIM)
    return pa.table({
        "ds": [ds] * n, "user_id": pa.array(users, pa.int64()), "item_id": pa.array(users % 7, pa.int64()),
        "ts": pa.array(np.full(n, 946_684_800_000_000 + 1000, np.int64), pa.timestamp("us", tz="UTC")),
        "label": pa.array(users % 2, pa.int32()), "rating": pa.array(np.ones(n), pa.float32()),
        "scenario": ["rating"] * n, "lum_match": pa.array([[0.5, 0.25]] * n, pa.list_(pa.float32())),
        "lum_target_match": pa.array(np.zeros(n), pa.float32()), "lum_user": emb, "lum_item": emb,
        "lum_knowledge_ds": ["2000-01-04"] * n, "lum_model_version": ["lum-x"] * n})


def stage(wh: Warehouse, name: str, ds: str, parts: list[pa.Table], *, shards: int = 1,
          metadata: dict[str, str] | None = None) -> None:
    """Commit ``parts`` as partition ``ds``, one file each, split across ``shards`` shards (round robin)."""
    stagers = [wh.stage_partition(name, ds=ds, run_id="t", shard=f"{i}/{shards}") for i in range(shards)]
    for i, part in enumerate(parts):
        stagers[i % shards].write(part, row_group_size=64)
    for s in stagers:
        s.finish()
    wh.commit_staged(name, ds=ds, run_id="t", metadata=metadata)


@pytest.fixture
def mwh(warehouse) -> str:
    """user_knowledge of DAYS (day D: two hash shards of 8 small files, overlapping user ranges),
    item_knowledge absent, dlrm_training of D in 4 files with a provenance-like record."""
    wh = Warehouse(warehouse)
    users = np.arange(1, 401, dtype=np.int64)
    for ds in DAYS:
        if ds == D:  # as a sharded infer writes it: each shard sorted, the shards' ranges overlapping
            chunks = [users[users % 2 == s][i::4] for s in (0, 1) for i in range(4)]
            stage(wh, "user_knowledge", ds, [knowledge(np.sort(c), ds) for c in chunks], shards=2)
        else:
            stage(wh, "user_knowledge", ds, [knowledge(c, ds) for c in np.array_split(users, 4)])
    record = {"lum.provenance.test": json.dumps({"days": [D]})}
    stage(wh, "dlrm_training", D, [training(c, D) for c in np.array_split(users[::-1], 4)], metadata=record)
    return warehouse


def snapshot(wh: Warehouse) -> dict[str, pa.Table]:
    keys = {"user_knowledge": ["ds", "user_id", "condition"], "dlrm_training": ["ds", "user_id", "item_id", "ts"]}
    return {name: wh.read(name).sort_by([(k, "ascending") for k in key]) for name, key in keys.items()}


def tables_snapshot(root: str) -> dict[str, bytes]:
    """Every file of the warehouse but the lease files (a run's lease guard stays behind)."""
    return {k: v for k, v in tree_snapshot(root).items() if not k.startswith("_leases/")}


def versions(wh: Warehouse) -> dict[str, int | None]:
    return {name: wh.version(name) for name in ("user_knowledge", "dlrm_training")}


def test_maintain_changes_no_row_clusters_by_user_and_a_rerun_changes_nothing(mwh, monkeypatch):
    monkeypatch.setenv("LUM_VACUUM_RETENTION_HOURS", "0")
    wh = Warehouse(mwh)
    before = snapshot(wh)
    looked_up = {(ds, table): query_many(mwh, np.arange(0, 410), ds=ds, table=table)
                 for ds, table in ((D, "user_knowledge"), ("2000-01-02", "user_knowledge"), (D, "dlrm_training"))}
    one = query_user_knowledge(mwh, user_ids=[7, 250], ds=D)
    assert not maintain.is_complete(mwh, D)
    summary = daily.run_maintain(D, mwh)
    rows = {r["table"]: r for r in summary["tables"]}
    uk = rows["user_knowledge"]
    assert uk["rewrite"] == "cluster" and uk["files_before"] == 8 and uk["files_after"] == 1
    assert uk["rows"] == 800 and uk["partitions_expired"] == [] and uk["files_vacuumed"] == 8
    assert rows["dlrm_training"]["rewrite"] == "cluster" and rows["dlrm_training"]["files_after"] == 1
    assert rows["item_knowledge"]["missing"] and summary["partitions_expired"] == 0
    assert {"stage", "ds", "seconds", "files_before", "files_after", "files_vacuumed"} <= set(summary)
    after = snapshot(wh)
    for name in before:
        assert after[name].equals(before[name]), name
    for (ds, table), rows in looked_up.items():  # lookups give the same rows (one user's in another order)
        key = ["user_id", "condition"] if table == "user_knowledge" else ["user_id", "item_id", "ts"]
        now = query_many(mwh, np.arange(0, 410), ds=ds, table=table)
        assert now.sort_by([(k, "ascending") for k in key]).equals(rows.sort_by([(k, "ascending") for k in key]))
    assert query_user_knowledge(mwh, user_ids=[7, 250], ds=D).equals(one)
    # day D's one file is sorted by user, in row groups of row_group_rows
    path = wh.delta_table("user_knowledge").file_uris([("ds", "=", D)])[0]
    ids = pq.read_table(path, columns=["user_id"]).column(0).to_numpy()
    assert (np.diff(ids) >= 0).all() and len(ids) == 800
    # other days were neither rewritten nor expired; a checkpoint exists; day D is recorded
    assert wh.partitions("user_knowledge") == list(DAYS)
    assert any(f.endswith(".checkpoint.parquet") for f in os.listdir(f"{mwh}/user_knowledge/_delta_log"))
    assert maintain.is_complete(mwh, D) and not maintain.is_complete(mwh, "2000-01-06")
    assert wh.table_metadata("user_knowledge")[plan.MARKER] == D
    # a rerun: same rows, no commit, nothing rewritten, nothing vacuumed
    first = versions(wh)
    files = tree_snapshot(f"{mwh}/user_knowledge")
    again = daily.run_maintain(D, mwh)
    assert versions(wh) == first
    assert {r["rewrite"] for r in again["tables"]} == {"none"} and again["files_vacuumed"] == 0
    assert {k: v for k, v in tree_snapshot(f"{mwh}/user_knowledge").items() if "_delta_log" not in k} == \
        {k: v for k, v in files.items() if "_delta_log" not in k}
    for name, table in snapshot(wh).items():
        assert table.equals(before[name]), name
    # maintaining an older day later does not move the record back
    daily.run_maintain("2000-01-04", mwh)
    assert wh.table_metadata("user_knowledge")[plan.MARKER] == D


def test_a_record_in_the_commit_metadata_survives_the_rewrite(mwh):
    wh = Warehouse(mwh)
    written, record = partition_record(wh, "dlrm_training", D, "lum.provenance.test")
    registry.run_with("maintain", {"tables": ["dlrm_training"], "cluster": ["dlrm_training"], "row_group_rows": 100,
                                   "compression": "LZ4_RAW"}, warehouse=mwh, ds=D)
    assert wh.version("dlrm_training") > written  # the rewrite committed; the record still describes D
    path = wh.delta_table("dlrm_training").file_uris([("ds", "=", D)])[0]
    meta = pq.read_metadata(path)
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [100] * 4
    assert meta.row_group(0).column(0).compression == "LZ4"  # pyarrow names the LZ4_RAW codec LZ4
    assert partition_record(wh, "dlrm_training", D, "lum.provenance.test") == (written, record)
    wh.write_partition("dlrm_training", training(np.arange(1, 5, dtype=np.int64), D), ds=D)  # new rows, no record
    with pytest.raises(ValueError, match="was replaced after version"):
        partition_record(wh, "dlrm_training", D, "lum.provenance.test")


def test_sort_mb_bounds_each_clustering_sort(mwh, monkeypatch):
    seen = []
    real = rangesort.cluster_partition

    def spy(*args, **kwargs):
        seen.append((args[1], kwargs["sort_bytes"], kwargs["key"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(maintenance, "cluster_partition", spy)
    wh = Warehouse(mwh)
    before = snapshot(wh)
    daily.run_stage("maintain", D, mwh, overrides={"sort_mb": 3})
    assert seen == [("user_knowledge", 3 << 20, ("user_id", "condition")),
                    ("dlrm_training", 3 << 20, ("user_id", "item_id", "ts"))]
    after = snapshot(wh)
    assert all(after[name].equals(before[name]) for name in before)


def test_tables_not_clustered_are_compacted_once(mwh):
    wh = Warehouse(mwh)
    items = np.arange(1, 301, dtype=np.int64)
    parts = [pa.table({"ds": [D] * len(c), "item_id": pa.array(c, pa.int64()),
                       "embedding": pa.FixedSizeListArray.from_arrays(pa.array(np.ones(len(c) * DIM, np.float32)), DIM),
                       "model_version": ["lum-x"] * len(c)}) for c in np.array_split(items[::-1], 5)]
    stage(wh, "item_knowledge", D, parts)
    before = wh.read("item_knowledge").sort_by("item_id")
    options = {"tables": ["item_knowledge"], "cluster": []}
    first = registry.run_with("maintain", options, warehouse=mwh, ds=D)["tables"][0]
    assert (first["rewrite"], first["files_before"], first["files_after"], first["rows"]) == ("compact", 5, 1, 300)
    version = wh.version("item_knowledge")
    again = registry.run_with("maintain", options, warehouse=mwh, ds=D)["tables"][0]
    assert again["rewrite"] == "none" and wh.version("item_knowledge") == version
    assert wh.read("item_knowledge").sort_by("item_id").equals(before)


def test_bucketed_sequences_keep_one_file_per_bucket(mwh):
    wh = Warehouse(mwh)
    write_bucketed(mwh, synthetic_sequences(80), ds=D, buckets=4)
    files = buckets.layout(wh, D).files
    out = registry.run_with("maintain", {"tables": ["user_sequences"], "cluster": []}, warehouse=mwh, ds=D)["tables"][0]
    assert (out["rewrite"], out["files_before"], out["files_after"], out["rows"]) == ("none", 4, 4, 80)
    assert buckets.layout(wh, D).files == files  # a compaction would have mixed the buckets


def test_expiry_keeps_keep_days_and_the_newest_day_before_d(mwh):
    wh = Warehouse(mwh)
    kept = wh.read("user_knowledge", start="2000-01-03")
    out = registry.run_with("maintain", {"keep_days": {"user_knowledge": 2}}, warehouse=mwh, ds=D)
    uk = next(r for r in out["tables"] if r["table"] == "user_knowledge")
    assert uk["partitions_expired"] == ["2000-01-01", "2000-01-02"]
    assert wh.partitions("user_knowledge") == ["2000-01-03", "2000-01-04", D]
    order = [("ds", "ascending"), ("user_id", "ascending"), ("condition", "ascending")]
    assert wh.read("user_knowledge").sort_by(order).equals(kept.sort_by(order))
    assert wh.partitions("dlrm_training") == [D]  # keep_days 0: nothing expired


@pytest.mark.parametrize(("days", "ds", "keep", "expired"), [
    (DAYS, D, 0, []),  # 0 = keep everything
    (DAYS, D, 1, ["2000-01-01", "2000-01-02", "2000-01-03"]),  # D-1 and D stay
    (DAYS, D, 10, []),
    (("2000-01-01", "2000-01-02", D), D, 1, ["2000-01-01"]),  # a gap: the newest day before D stays
    (("2000-01-01",), D, 1, []),
    ((D, "2000-01-09"), D, 1, []),  # never D or later
])
def test_days_to_expire(days, ds, keep, expired):
    assert plan.days_to_expire(days, ds, keep) == expired


@pytest.mark.parametrize(("options", "match"), [
    ({"tables": ["user_knowledge", "nope"]}, "unknown table 'nope'"),
    ({"tables": ["items"]}, "items is not partitioned by ds"),
    ({"tables": ["user_knowledge", "user_knowledge"]}, "lists a table twice"),
    ({"cluster": ["item_knowledge"], "tables": ["user_knowledge"]}, "not in tables"),
    ({"cluster": ["item_knowledge"]}, "item_knowledge has no user_id column"),
    ({"keep_days": {"user_knowledge": -1}}, r"keep_days.user_knowledge must be an integer >= 0"),
    ({"keep_days.dlrm_training": -3}, r"keep_days.dlrm_training must be an integer >= 0"),
    ({"keep_days": {"nope": 3}}, "unknown Config.keep_days option 'nope'"),
    ({"target_file_mb": 0}, "target_file_mb must be >= 1"),
    ({"compression": "zip"}, "compression must be one of ZSTD, LZ4_RAW"),
    ({"sort_mb": 0}, r"sort_mb must be >= 1"),
    ({"spill_codec": "gzip"}, "spill_codec must be one of lz4, zstd, none, got 'gzip'"),
])
def test_bad_config_is_one_line_and_changes_nothing(mwh, options, match):
    before = tables_snapshot(mwh)
    with pytest.raises(ValueError, match=match) as info:
        daily.run_stage("maintain", D, mwh, overrides=options)
    assert "\n" not in str(info.value)
    assert tables_snapshot(mwh) == before


def test_bad_day_or_retention_setting_changes_nothing(mwh, monkeypatch):
    before = tables_snapshot(mwh)
    with pytest.raises(ValueError, match="ds"):
        registry.run_with("maintain", warehouse=mwh, ds="2000-13-01")
    monkeypatch.setenv("LUM_VACUUM_RETENTION_HOURS", "-1")
    with pytest.raises(ValueError, match="LUM_VACUUM_RETENTION_HOURS"):
        registry.run_with("maintain", warehouse=mwh, ds=D)
    assert tables_snapshot(mwh) == before


def test_maintain_holds_its_lease(mwh):
    with lease.hold(mwh, "maintain", [D]), pytest.raises(lease.LeaseHeld, match="maintain"):
        daily.run_maintain(D, mwh)
    assert not maintain.is_complete(mwh, D)


def test_layout_decides_when_to_cluster(mwh):
    wh = Warehouse(mwh)
    day = layout(wh, "user_knowledge", D)
    assert (day.files, day.rows, day.disjoint) == (8, 800, False) and day.needs_clustering(128 << 20)
    old = layout(wh, "user_knowledge", "2000-01-01")  # four sorted, disjoint but small files
    assert old.disjoint and old.needs_clustering(128 << 20) and not old.needs_clustering(old.bytes // 2)
    assert layout(wh, "user_knowledge", "1999-01-01").files == 0
