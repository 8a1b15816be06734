"""The point-in-time join: values against a numpy reference, point-in-time poisoning, idempotence,
fallbacks and errors that leave dlrm_training unchanged, and a second consumer from a spec file."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from tests.conftest import tree_snapshot

D = "2001-01-05"
DIM = 4
CATS = ["A", "B", "C"]
ITEM_CAT = {1: "A", 2: "B", 3: "C", 4: "A", 5: "B", 6: "C", 7: None}


def _utc(day: str, seconds: int) -> dt.datetime:
    d = dt.date.fromisoformat(day)
    return dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC) + dt.timedelta(seconds=seconds)


def samples_table(day: str, seed: int = 0) -> pa.Table:
    """Users 1..4 x a few items; user 4 and item 6 have no knowledge, item 7 has no category."""
    rng = np.random.default_rng(seed)
    pairs = [(1, 1), (1, 2), (1, 6), (2, 3), (2, 4), (2, 5), (3, 3), (3, 1), (4, 2), (2, 7), (1, 1)]
    secs = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110]  # (1, 1) twice at different ts
    ratings = rng.integers(1, 6, len(pairs)).astype(np.float32)
    return pa.table({
        "user_id": pa.array([u for u, _ in pairs], pa.int64()),
        "item_id": pa.array([i for _, i in pairs], pa.int64()),
        "ts": pa.array([_utc(day, s) for s in secs], pa.timestamp("us", tz="UTC")),
        "label": pa.array((ratings >= 4).astype(np.int32)),
        "rating": pa.array(ratings),
        "scenario": ["rating"] * len(pairs),
    })


def knowledge(day: str, *, seed: int, version: str, dim: int = DIM, users=(1, 2, 3), items=(1, 2, 3, 4, 5, 7),
              scale: float = 1.0) -> tuple[pa.Table, pa.Table]:
    rng = np.random.default_rng(seed)
    rows = []
    for u in users:
        for c in CATS:
            if u == 3 and c == "C":
                continue  # user 3 has no knowledge under category=C
            rows.append((u, f"category={c}", (scale * rng.normal(size=dim)).astype(np.float32).tolist()))
    uk = pa.table({
        "user_id": pa.array([r[0] for r in rows], pa.int64()),
        "condition": [r[1] for r in rows],
        "embedding": pa.array([r[2] for r in rows], pa.list_(pa.float32(), dim)),
        "model_version": [version] * len(rows),
        "history_len": pa.array([5] * len(rows), pa.int32()),
    })
    ik = pa.table({
        "item_id": pa.array(list(items), pa.int64()),
        "embedding": pa.array([(scale * rng.normal(size=dim)).astype(np.float32).tolist() for _ in items],
                              pa.list_(pa.float32(), dim)),
        "model_version": [version] * len(items),
    })
    return uk, ik


def items_table() -> pa.Table:
    ids = sorted(ITEM_CAT)
    return pa.table({"item_id": pa.array(ids, pa.int64()), "title": [f"t{i}" for i in ids],
                     "category": [ITEM_CAT[i] for i in ids],
                     "categories": [[ITEM_CAT[i]] if ITEM_CAT[i] else [] for i in ids]})


def make_warehouse(path: str, *, knowledge_days=("2001-01-02", "2001-01-04")):
    from stages.warehouse.facade import Warehouse

    wh = Warehouse(path)
    wh.write_table("items", items_table())
    wh.write_partition("dlrm_samples", samples_table(D), ds=D)
    for n, day in enumerate(knowledge_days):
        uk, ik = knowledge(day, seed=n + 1, version=f"lum-{day}")
        wh.write_partition("user_knowledge", uk, ds=day)
        wh.write_partition("item_knowledge", ik, ds=day)
    return wh


def cos(a, b) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def sorted_rows(table: pa.Table) -> list[dict]:
    return sorted(table.to_pylist(), key=lambda r: (r["user_id"], r["item_id"], r["ts"]))


def run_join(wh, **cfg):
    from stages.join.stage import Config, run

    return run(Config(**cfg), ds=D, warehouse=wh.uri)


@pytest.mark.parametrize("similarity", ["numpy"])
def test_join_values_match_numpy_reference(spark, warehouse, similarity):
    from schemas.dlrm_training import CONDITIONS_KEY, decode_conditions

    wh = make_warehouse(warehouse)
    summary = run_join(wh, similarity=similarity)
    assert summary["rows"] == 11 and summary["knowledge_ds"] == "2001-01-04" and summary["knowledge_lag_days"] == 1
    assert summary["model_version"] == "lum-2001-01-04" and summary["fallback"] is None
    out = wh.read("dlrm_training", ds=D)
    assert out.num_rows == 11
    conds = decode_conditions(wh.table_metadata("dlrm_training")[CONDITIONS_KEY])
    assert conds == ["category=A", "category=B", "category=C"]

    uk = wh.read("user_knowledge", ds="2001-01-04").to_pylist()
    ik = wh.read("item_knowledge", ds="2001-01-04").to_pylist()
    user_vec = {(r["user_id"], r["condition"]): np.array(r["embedding"]) for r in uk}
    item_vec = {r["item_id"]: np.array(r["embedding"]) for r in ik}
    without = 0
    for row in sorted_rows(out):
        u, i = row["user_id"], row["item_id"]
        has = any(k[0] == u for k in user_vec) and i in item_vec
        if not has:
            without += 1
            assert row["lum_match"] is None and row["lum_user"] is None and row["lum_knowledge_ds"] is None
            assert row["lum_target_match"] is None and row["lum_item"] is None
            continue
        assert row["lum_knowledge_ds"] == "2001-01-04" and row["lum_model_version"] == "lum-2001-01-04"
        np.testing.assert_allclose(row["lum_item"], item_vec[i], rtol=1e-6)
        for c, got in zip(conds, row["lum_match"]):
            if (u, c) in user_vec:
                assert got == pytest.approx(cos(user_vec[(u, c)], item_vec[i]), abs=1e-5)
            else:
                assert got is None
        target = f"category={ITEM_CAT[i]}" if ITEM_CAT[i] else None
        if target and (u, target) in user_vec:
            np.testing.assert_allclose(row["lum_user"], user_vec[(u, target)], rtol=1e-6)
            assert row["lum_target_match"] == pytest.approx(cos(user_vec[(u, target)], item_vec[i]), abs=1e-5)
        else:
            assert row["lum_user"] is None and row["lum_target_match"] is None
    assert without == summary["rows_without_knowledge"] == 2  # user 4; item 6 (of user 1)


@pytest.mark.parametrize("similarity", ["sql", "arrow", "einsum"])
def test_removed_or_unknown_similarity_is_an_error_naming_it(warehouse, similarity):
    wh = make_warehouse(warehouse)
    with pytest.raises(ValueError, match=f"similarity.*'{similarity}'"):
        run_join(wh, similarity=similarity)
    assert not wh.exists("dlrm_training")


def test_point_in_time_poisoned_day_d_and_later_change_nothing(spark, warehouse):
    wh = make_warehouse(warehouse)
    run_join(wh)
    before = sorted_rows(wh.read("dlrm_training", ds=D))
    for n, day in enumerate((D, "2001-01-06")):  # garbage knowledge of day D and later
        uk, ik = knowledge(day, seed=99 + n, version="poison", scale=1000.0, users=(1, 2, 3, 4),
                           items=(1, 2, 3, 4, 5, 6, 7))
        wh.write_partition("user_knowledge", uk, ds=day)
        wh.write_partition("item_knowledge", ik, ds=day)
    wh.write_partition("dlrm_samples", samples_table("2001-01-06", seed=5), ds="2001-01-06")
    summary = run_join(wh)
    after = sorted_rows(wh.read("dlrm_training", ds=D))
    assert summary["knowledge_ds"] == "2001-01-04"
    assert after == before
    assert all(r["lum_knowledge_ds"] is None or r["lum_knowledge_ds"] < D for r in after)


def test_rerun_is_idempotent_and_lag_picks_older_partition(spark, warehouse):
    wh = make_warehouse(warehouse)
    run_join(wh)
    first = sorted_rows(wh.read("dlrm_training", ds=D))
    v1 = wh.version("dlrm_training")
    run_join(wh)
    assert wh.version("dlrm_training") > v1
    assert sorted_rows(wh.read("dlrm_training", ds=D)) == first
    summary = run_join(wh, lag_days=2, allow_stale_knowledge=True)  # D - 2 = 2001-01-03: the 01-02 partition
    assert summary["knowledge_ds"] == "2001-01-02" and summary["knowledge_lag_days"] == 3
    rows = wh.read("dlrm_training", ds=D)
    assert rows.num_rows == 11
    assert set(rows.column("lum_knowledge_ds").drop_null().to_pylist()) == {"2001-01-02"}
    with pytest.raises(ValueError, match="lag_days"):
        run_join(wh, lag_days=0)


def test_missing_knowledge_is_an_error_unless_allowed_then_nulls(spark, warehouse):
    wh = make_warehouse(warehouse, knowledge_days=(D,))  # only knowledge of day D itself: unusable
    with pytest.raises(ValueError, match="needs the knowledge of 2001-01-04 .*allow_stale_knowledge"):
        run_join(wh)  # the default: D - 1's knowledge or nothing
    with pytest.raises(ValueError, match="require_knowledge"):
        run_join(wh, allow_stale_knowledge=True, require_knowledge=True)
    assert not wh.exists("dlrm_training")
    summary = run_join(wh, allow_stale_knowledge=True)  # a first-ever day: null LUM columns
    assert summary["fallback"] == "no_knowledge" and summary["knowledge_ds"] is None
    assert summary["knowledge_lag_days"] is None
    assert summary["rows_without_knowledge"] == summary["rows"] == 11
    out = wh.read("dlrm_training", ds=D)
    assert out.num_rows == 11 and out.column("lum_match").null_count == 11


def test_partitions_of_different_days_use_newest_common(spark, warehouse):
    wh = make_warehouse(warehouse)
    uk, _ = knowledge("2001-01-03", seed=7, version="lum-2001-01-03")
    wh.write_partition("user_knowledge", uk, ds="2001-01-03")  # no item_knowledge of 01-03
    with pytest.raises(ValueError, match="2001-01-03 .*which item_knowledge does not have"):
        run_join(wh, lag_days=2)
    summary = run_join(wh, lag_days=2, allow_stale_knowledge=True)  # users' newest 01-03, items' 01-02
    assert summary["knowledge_ds"] == "2001-01-02" and summary["fallback"] == "common_partition"


def test_stale_knowledge_is_an_error_by_default_and_recorded_when_allowed(spark, warehouse, caplog):
    wh = make_warehouse(warehouse, knowledge_days=("2001-01-02", "2001-01-03"))  # the run for 01-04 failed
    with pytest.raises(ValueError, match="join 2001-01-05 needs the knowledge of 2001-01-04 .*user_knowledge and "
                                         "item_knowledge do not have"):
        run_join(wh)
    assert not wh.exists("dlrm_training")
    with caplog.at_level("WARNING", logger="stages.join.plan"):
        summary = run_join(wh, allow_stale_knowledge=True)
    assert "allow_stale_knowledge is set: using 2001-01-03" in caplog.text
    assert summary["knowledge_ds"] == "2001-01-03" and summary["knowledge_lag_days"] == 2
    assert summary["fallback"] is None  # both tables agree on 01-03; the lag says it is stale
    used = set(wh.read("dlrm_training", ds=D).column("lum_knowledge_ds").drop_null().to_pylist())
    assert used == {"2001-01-03"}


@pytest.mark.parametrize("problem", ["dim", "version"])
def test_mismatched_knowledge_is_an_error_and_leaves_table_unchanged(spark, warehouse, problem):
    wh = make_warehouse(warehouse)
    run_join(wh)
    snapshot = tree_snapshot(wh.table_uri("dlrm_training"))
    uk, _ = knowledge("2001-01-04", seed=3, version="lum-2001-01-04")
    _, ik = knowledge("2001-01-04", seed=3, version="other" if problem == "version" else "lum-2001-01-04",
                      dim=DIM + 2 if problem == "dim" else DIM)
    wh.write_partition("user_knowledge", uk, ds="2001-01-04")
    wh.write_partition("item_knowledge", ik, ds="2001-01-04")
    with pytest.raises(ValueError, match="width mismatch" if problem == "dim" else "model_version mismatch"):
        run_join(wh)
    assert tree_snapshot(wh.table_uri("dlrm_training")) == snapshot


@pytest.mark.parametrize("problem", ["missing_column", "duplicate_key"])
def test_bad_samples_partition_is_an_error(spark, warehouse, problem):
    from deltalake import write_deltalake

    wh = make_warehouse(warehouse)
    run_join(wh)
    snapshot = tree_snapshot(wh.table_uri("dlrm_training"))
    import shutil

    shutil.rmtree(wh.table_uri("dlrm_samples"))
    bad = samples_table(D).append_column("ds", pa.array([D] * 11))
    if problem == "missing_column":
        bad = bad.drop_columns(["label"])
    else:
        bad = pa.concat_tables([bad, bad.slice(0, 2)])
    write_deltalake(wh.table_uri("dlrm_samples"), bad, partition_by=["ds"])  # bypasses validation
    # a duplicated sample key is refused by the write's key check on the written files, before the commit
    with pytest.raises(ValueError, match="label" if problem == "missing_column" else
                       r"key \(user_id, item_id, ts\) appears 2 times: user_id=1, item_id="):
        run_join(wh)
    assert tree_snapshot(wh.table_uri("dlrm_training")) == snapshot


def test_second_consumer_from_a_spec_file(spark, warehouse, tmp_path):
    from schemas.dlrm_training import CONDITIONS_KEY, decode_conditions

    wh = make_warehouse(warehouse)
    spec = tmp_path / "narrow.toml"
    spec.write_text('name = "narrow"\nconditions = ["category=B", "category=A"]\n'
                    'features = ["lum_match", "lum_target_match"]\nlag_days = 2\n')
    summary = run_join(wh, spec=str(spec), allow_stale_knowledge=True)  # D - 2 = 01-03 has none: 01-02
    assert summary["spec"] == "narrow" and summary["knowledge_ds"] == "2001-01-02"
    assert decode_conditions(wh.table_metadata("dlrm_training")[CONDITIONS_KEY]) == ["category=B", "category=A"]
    out = wh.read("dlrm_training", ds=D)
    assert out.column("lum_user").null_count == 11 and out.column("lum_item").null_count == 11
    assert {len(v) for v in out.column("lum_match").drop_null().to_pylist()} == {2}
