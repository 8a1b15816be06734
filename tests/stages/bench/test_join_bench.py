"""``lum bench join --quick`` on a tiny size: the report has the measured rows and every sample row once."""

from __future__ import annotations

import os

import pytest


@pytest.mark.slow  # a benchmark run (Spark job + data generation), ~10-90 s depending on load
def test_bench_join_quick_report(spark, tmp_path):
    from stages.pipeline.registry import run_with

    report = run_with("bench.join", {"samples": 3000, "users": 300, "items": 50, "categories": 3, "dim": 4,
                        "knowledge_coverage": 0.8, "dir": str(tmp_path / "bench"), "keep": True},
                       quick=True, warehouse=str(tmp_path / "unused"))
    row = report["table"][0]
    assert row["samples"] == 3000 and row["rows_per_s"] > 0
    assert report["join_summary"]["rows"] == 3000
    # ~20% of users have no knowledge: their samples keep their rows with null LUM columns
    assert 300 < report["join_summary"]["rows_without_knowledge"] < 1000
    assert report["counts"]["user_knowledge"] == report["counts"]["users_with_knowledge"] * 3
    assert not os.path.exists(tmp_path / "unused")
    from stages.warehouse.facade import Warehouse

    out = Warehouse(report["warehouse"]).read("dlrm_training", ds="2000-01-02")
    assert out.num_rows == 3000
    assert {len(v) for v in out.column("lum_match").drop_null().to_pylist()} == {3}


def test_bench_join_rejects_unknown_option(tmp_path):
    from stages.pipeline.registry import run_with

    with pytest.raises(ValueError, match="unknown bench.join option.*rows"):
        run_with("bench.join", {"rows": 5}, quick=True, warehouse=str(tmp_path))
