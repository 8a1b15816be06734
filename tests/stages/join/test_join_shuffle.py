"""The knowledge goes through one shuffle: the samples are repartitioned by user and zipped with the users' vectors,
which their group-by left partitioned alike (stages.join.frame). Where Spark would not zip them, the whole union
is repartitioned, with the same rows."""

from __future__ import annotations

import pytest

from tests.stages.join.test_join import D, make_warehouse, run_join, sorted_rows


def _plan(wh):
    """(rows of the join of day D, their number of partitions, the physical plan's lines), nothing computed."""
    from stages.join import provenance
    from stages.join import stage as J
    from stages.join.frame import physical_plan

    cfg = J.Config()
    spec, lag = J.check_config(cfg)
    versions = provenance.pin_inputs(wh, spec)
    prep = J.prepare(cfg, spec, lag, wh, versions)
    samples = wh.read_spark(prep.spark, spec.samples_table, ds=D, version=versions[spec.samples_table])
    k_ds, _ = J.resolve_knowledge(wh, D, lag, allow_stale=False, versions=versions)
    joined = J.join_days(cfg, prep, samples, {D: 11}, k_ds)
    parts = int(prep.spark.conf.get("spark.sql.shuffle.partitions"))
    return joined.rows, parts, physical_plan(joined.rows).toString().splitlines()


def _exchanges_above_union(lines: list[str]) -> int:
    union = next(i for i, line in enumerate(lines) if "Union" in line)
    return sum("Exchange" in line for line in lines[:union])


@pytest.fixture
def union_partitioning(spark):
    """Sets spark.sql.unionOutputPartitioning for one test, then puts it back."""
    key = "spark.sql.unionOutputPartitioning"
    before = spark.conf.get(key)
    yield lambda value: spark.conf.set(key, value)
    spark.conf.set(key, before)


def test_the_samples_are_zipped_with_the_users_vectors_without_a_second_shuffle(spark, warehouse):
    from stages.join.frame import hash_partitioned

    wh = make_warehouse(warehouse)
    rows, parts, lines = _plan(wh)
    assert hash_partitioned(rows, parts)
    assert _exchanges_above_union(lines) == 0
    knowledge_scans = [line for line in lines if "FileScan" in line and "condition:string" in line]
    assert len(knowledge_scans) == 1
    summary = run_join(wh)
    assert summary["rows"] == 11 and summary["rows_without_knowledge"] == 2


def test_a_union_spark_would_not_zip_is_repartitioned_whole_with_the_same_rows(spark, warehouse, union_partitioning):
    wh = make_warehouse(warehouse)
    run_join(wh)
    expected = sorted_rows(wh.read("dlrm_training", ds=D))
    union_partitioning("false")
    _, _, lines = _plan(wh)
    assert _exchanges_above_union(lines) == 1
    summary = run_join(wh)
    assert summary["rows"] == 11 and summary["rows_without_knowledge"] == 2
    assert sorted_rows(wh.read("dlrm_training", ds=D)) == expected


def test_hash_partitioned_reads_the_physical_plan(spark):
    from stages.join.frame import hash_partitioned

    assert hash_partitioned(spark.range(10).repartition(4, "id"), 4)
    assert not hash_partitioned(spark.range(10).repartition(4, "id"), 5)
    assert not hash_partitioned(spark.range(10).repartition(4), 4)  # round robin
    assert not hash_partitioned(object(), 4)  # no plan to read: the caller takes the path that needs none
