"""The range join: same rows as one run per day (across knowledge groups and a day before any
knowledge), idempotent rerun, bad input leaving the group's days unchanged, the many-day bridge
refusing foreign days, and lum backfill --stages join taking the range path."""

from __future__ import annotations

import os
import shutil

import pyarrow as pa
import pytest

from tests.conftest import tree_snapshot
from tests.stages.join.test_join import items_table, knowledge, samples_table, sorted_rows

# Samples on four days (none on 01-04); knowledge on 01-02 and 01-04, lag 1:
# 01-02 -> none (null LUM), 01-03 -> 01-02, 01-05 and 01-06 -> 01-04: three groups.
SAMPLE_DAYS = ("2001-01-02", "2001-01-03", "2001-01-05", "2001-01-06")
KNOWLEDGE_DAYS = ("2001-01-02", "2001-01-04")
START, END = "2001-01-02", "2001-01-06"


def make_range_warehouse(path: str):
    from stages.warehouse.facade import Warehouse

    wh = Warehouse(path)
    wh.write_table("items", items_table())
    for n, day in enumerate(SAMPLE_DAYS):
        wh.write_partition("dlrm_samples", samples_table(day, seed=n), ds=day)
    for n, day in enumerate(KNOWLEDGE_DAYS):
        uk, ik = knowledge(day, seed=n + 1, version=f"lum-{day}")
        wh.write_partition("user_knowledge", uk, ds=day)
        wh.write_partition("item_knowledge", ik, ds=day)
    return wh


def partitions_rows(wh) -> dict[str, list[dict]]:
    return {day: sorted_rows(wh.read("dlrm_training", ds=day)) for day in wh.partitions("dlrm_training")}


@pytest.fixture(scope="module")
def base_warehouse(tmp_path_factory) -> str:
    """Inputs only (no dlrm_training). Read-only: copy before writing."""
    path = str(tmp_path_factory.mktemp("range") / "warehouse")
    make_range_warehouse(path)
    return path


@pytest.fixture(scope="module")
def per_day_warehouse(spark, base_warehouse, tmp_path_factory) -> str:
    """The inputs plus dlrm_training of every sample day, written by one join.run per day (the
    reference). Read-only: copy before writing."""
    from stages.join.stage import Config, run

    path = str(tmp_path_factory.mktemp("per-day") / "warehouse")
    shutil.copytree(base_warehouse, path)
    for day in SAMPLE_DAYS:
        run(Config(allow_stale_knowledge=True), ds=day, warehouse=path)
    return path


@pytest.fixture(scope="module")
def per_day_rows(per_day_warehouse) -> dict[str, list[dict]]:
    from stages.warehouse.facade import Warehouse

    return partitions_rows(Warehouse(per_day_warehouse))


def run_range(path: str, **cfg):
    from stages.join.range import run_range as run
    from stages.join.stage import Config

    return run(Config(**{"allow_stale_knowledge": True, **cfg}), start=START, end=END, warehouse=path)


def test_plan_groups_follows_the_per_day_choice():
    from stages.join.plan import plan_groups

    groups = plan_groups(list(SAMPLE_DAYS), list(KNOWLEDGE_DAYS), list(KNOWLEDGE_DAYS), 1)
    assert [(g.knowledge_ds, g.days) for g in groups] == [
        (None, ("2001-01-02",)), ("2001-01-02", ("2001-01-03",)), ("2001-01-04", ("2001-01-05", "2001-01-06"))]
    assert [len(g.days) for g in plan_groups(list(SAMPLE_DAYS), [], [], 1)] == [4]  # all without knowledge


def test_range_equals_per_day_and_rerun_is_identical(spark, base_warehouse, per_day_rows, copy_warehouse):
    from stages.warehouse.facade import Warehouse

    path = copy_warehouse(base_warehouse)
    summary = run_range(path)
    wh = Warehouse(path)
    assert summary["days"] == 4 and summary["days_without_samples"] == ["2001-01-04"]
    assert [g["knowledge_ds"] for g in summary["groups"]] == [None, "2001-01-02", "2001-01-04"]
    assert summary["rows"] == 44 and summary["groups"][0]["rows_without_knowledge"] == 11
    assert [g["max_knowledge_lag_days"] for g in summary["groups"]] == [None, 1, 2]
    assert summary["max_knowledge_lag_days"] == 2
    got = partitions_rows(wh)
    assert list(got) == list(SAMPLE_DAYS) == list(per_day_rows)
    for day in SAMPLE_DAYS:
        assert got[day] == per_day_rows[day], day
    assert {r["lum_knowledge_ds"] for r in got["2001-01-02"]} == {None}
    assert {r["lum_knowledge_ds"] for r in got["2001-01-06"]} == {"2001-01-04", None}
    assert summary["rows_without_knowledge"] == sum(
        r["lum_knowledge_ds"] is None for rows in got.values() for r in rows)

    version = wh.version("dlrm_training")
    again = run_range(path)
    assert wh.version("dlrm_training") == version + len(again["groups"])  # one commit per group
    assert partitions_rows(wh) == got
    table = wh.read("dlrm_training")
    keys = set(zip(*(table.column(c).to_pylist() for c in ("ds", "user_id", "item_id", "ts"))))
    assert table.num_rows == len(keys) == 44


def test_range_without_d_minus_1_knowledge_is_an_error_before_any_write(base_warehouse, copy_warehouse):
    from stages.join.range import run_range as run
    from stages.join.stage import Config
    from stages.pipeline import backfill

    path = copy_warehouse(base_warehouse)
    with pytest.raises(ValueError, match="join 2001-01-02 needs the knowledge of 2001-01-01"):
        run(Config(), start=START, end=END, warehouse=path)
    with pytest.raises(ValueError, match="join 2001-01-06 needs the knowledge of 2001-01-05"):
        run(Config(), start="2001-01-03", end=END, warehouse=path)
    with pytest.raises(ValueError, match="2001-01-01.*bootstrap it first with `lum backfill --start 2001-01-01"):
        backfill.run_backfill(start=START, end=END, stages=["join"], warehouse=path)
    assert not os.path.exists(os.path.join(path, "dlrm_training"))


@pytest.mark.parametrize("problem", ["duplicate_key", "missing_column"])
def test_bad_samples_day_is_an_error_and_leaves_the_group_unchanged(spark, base_warehouse, copy_warehouse,
                                                                     problem):
    from deltalake import write_deltalake

    from stages.join.range import run_range as run
    from stages.join.stage import Config
    from stages.warehouse.facade import Warehouse

    path = copy_warehouse(base_warehouse)
    cfg = Config(allow_stale_knowledge=True)  # 01-06 uses 01-04's knowledge
    run(cfg, start="2001-01-05", end="2001-01-06", warehouse=path)  # one group: 01-05, 01-06
    wh = Warehouse(path)
    snapshot = tree_snapshot(wh.table_uri("dlrm_training"))
    bad_day = "2001-01-06"
    bad = samples_table(bad_day, seed=3).append_column("ds", pa.array([bad_day] * 11))
    if problem == "duplicate_key":  # one partition with a repeated key, written around validation
        write_deltalake(wh.table_uri("dlrm_samples"), bad.slice(0, 2), mode="append", partition_by=["ds"])
    else:
        shutil.rmtree(wh.table_uri("dlrm_samples"))
        write_deltalake(wh.table_uri("dlrm_samples"), bad.drop_columns(["label"]), partition_by=["ds"])
    match = (f"dlrm_training ds={bad_day}: key \\(user_id, item_id, ts\\) appears 2 times" if problem == "duplicate_key"
             else "column\\(s\\) label")  # the duplicate: refused by the write's key check, before the commit
    with pytest.raises(ValueError, match=match):
        run(cfg, start="2001-01-05", end=bad_day, warehouse=path)
    assert tree_snapshot(wh.table_uri("dlrm_training")) == snapshot  # no commit, no stray files


def test_many_day_bridge_refuses_rows_of_other_days(spark, per_day_warehouse, per_day_rows, copy_warehouse):
    from stages.warehouse.facade import Warehouse
    from stages.warehouse.spark_bridge import write_spark_partitions

    path = copy_warehouse(per_day_warehouse)
    wh = Warehouse(path)
    snapshot = tree_snapshot(wh.table_uri("dlrm_training"))
    df = wh.read_spark(spark, "dlrm_training", start="2001-01-03", end="2001-01-06")
    with pytest.raises(ValueError, match="belongs to partition 2001-01-03, not one of the 2 days"):
        write_spark_partitions(wh, "dlrm_training", df, days=["2001-01-05", "2001-01-06"])
    assert tree_snapshot(wh.table_uri("dlrm_training")) == snapshot
    version = write_spark_partitions(wh, "dlrm_training", df, days=["2001-01-03", "2001-01-05", "2001-01-06"],
                                     app_id="t1")
    assert write_spark_partitions(wh, "dlrm_training", df, days=["2001-01-03", "2001-01-05", "2001-01-06"],
                                  app_id="t1") == version  # a retried write applies once
    assert partitions_rows(wh) == per_day_rows


def test_backfill_join_stretch_uses_the_range_path(spark, base_warehouse, per_day_rows, copy_warehouse):
    from stages.pipeline import backfill
    from stages.warehouse.facade import Warehouse

    path = copy_warehouse(base_warehouse)
    stale = {"join.allow_stale_knowledge": True}  # 01-02 has no knowledge before it, 01-06 has 01-04's
    out = backfill.run_backfill(start=START, end=END, stages=["join"], warehouse=path, overrides=stale)
    # 01-04 has no samples (complete, skipped) and splits the days into two stretches of two days.
    assert out["skipped"] == ["2001-01-04"] and out["ran"] == list(SAMPLE_DAYS)
    assert out["join_ranges"] == [{"start": "2001-01-02", "end": "2001-01-03", "days": 2,
                                   "seconds": out["join_ranges"][0]["seconds"]},
                                  {"start": "2001-01-05", "end": "2001-01-06", "days": 2,
                                   "seconds": out["join_ranges"][1]["seconds"]}]
    assert partitions_rows(Warehouse(path)) == per_day_rows
    again = backfill.run_backfill(start=START, end=END, stages=["join"], warehouse=path, overrides=stale)
    assert again["ran"] == [] and again["join_ranges"] == []


def test_backfill_stretches_only_cover_join_only_days(monkeypatch, warehouse):
    from stages.pipeline import backfill, daily

    todo = {"2000-01-01": ["infer", "join"], "2000-01-02": ["join"], "2000-01-03": ["join"],
            "2000-01-04": [], "2000-01-05": ["join"], "2000-01-06": ["join"], "2000-01-07": ["join"]}
    calls: list[tuple] = []
    monkeypatch.setattr(backfill, "stages_to_run", lambda wh, ds, stages, force: todo[ds])
    monkeypatch.setattr(daily, "RUNNERS", {s: (lambda ds, *a, s=s: calls.append((s, ds)) or {"seconds": 0.0})
                                           for s in daily.STAGES})
    monkeypatch.setattr(backfill, "_run_join_range",
                        lambda start, end, *a: calls.append(("range", start, end)) or {"seconds": 1.0})
    out = backfill.run_backfill(start="2000-01-01", end="2000-01-07", stages=["infer", "join"], warehouse=warehouse)
    assert calls == [("infer", "2000-01-01"), ("join", "2000-01-01"), ("range", "2000-01-02", "2000-01-03"),
                     ("range", "2000-01-05", "2000-01-07")]
    assert out["skipped"] == ["2000-01-04"] and out["stage_runs"] == 7


@pytest.mark.parametrize("argv, match", [
    (["run", "join", "--ds", START, "--start", START, "--end", END], "either --ds or --start/--end"),
    (["run", "join", "--start", START], "--start and --end go together"),
    (["run", "infer", "--start", START, "--end", END], "join` only"),
    (["run", "join"], "--ds is required"),
])
def test_cli_run_join_range_arguments(argv, match, warehouse, capsys):
    from stages.cli.app import main

    assert main(argv + ["--warehouse", warehouse]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0]
