"""``lum bench join --quick`` on a tiny size: both paths (the join and its old path) write every sample row once,
the same rows, and the report has both rates and their ratio; rows that differ fail the bench."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.compute as pc
import pytest

TINY = {"samples": 3000, "users": 300, "items": 50, "categories": 3, "dim": 4, "knowledge_coverage": 0.8,
        "warmup": False}


@pytest.mark.slow  # a benchmark run (Spark jobs + data generation), ~30-90 s depending on load
def test_bench_join_quick_report(spark, tmp_path):
    from stages.pipeline.registry import run_with
    from stages.warehouse.facade import Warehouse

    report = run_with("bench.join", {**TINY, "dir": str(tmp_path / "bench"), "keep": True},
                      quick=True, warehouse=str(tmp_path / "unused"))
    current, baseline = report["table"]
    assert (current["path"], baseline["path"]) == ("current", "baseline")
    assert current["samples"] == baseline["samples"] == 3000 and current["rows_per_s"] > 0
    assert report["summary"]["outputs_equal"] is True
    assert report["summary"]["speedup"] == current["vs_baseline"] and baseline["vs_baseline"] == 1
    # ~20% of users have no knowledge: their samples keep their rows with null LUM columns, on both paths
    assert 300 < current["without_knowledge"] == baseline["without_knowledge"] < 1000
    assert report["counts"]["user_knowledge"] == report["counts"]["users_with_knowledge"] * 3
    assert not os.path.exists(tmp_path / "unused")
    wh = Warehouse(report["warehouse"])
    for version in report["versions"].values():
        out = wh.read("dlrm_training", ds="2000-01-02", version=version)
        assert out.num_rows == 3000
        assert {len(v) for v in out.column("lum_match").drop_null().to_pylist()} == {3}


@pytest.mark.slow  # as above
def test_bench_join_fails_when_the_paths_disagree(spark, tmp_path, monkeypatch):
    from stages.bench import join as bench
    from stages.pipeline.registry import run_with

    def wrong_baseline(wh, *, ds, k_ds):
        """The current rows with one lum_target_match changed, written as the baseline's version."""
        rows = wh.read("dlrm_training", ds=ds)
        target = rows.column("lum_target_match").combine_chunks()
        first = pc.index(pc.is_valid(target), True).as_py()
        changed = pa.array([v + 1e-3 if i == first else v for i, v in enumerate(target.to_pylist())], pa.float32())
        rows = rows.set_column(rows.schema.get_field_index("lum_target_match"), "lum_target_match", changed)
        version = wh.write_partition("dlrm_training", rows.drop_columns(["ds"]), ds=ds)
        return {"rows": rows.num_rows, "rows_without_knowledge": pc.sum(pc.is_null(rows.column("lum_knowledge_ds"))
                                                                        ).as_py(), "version": version, "seconds": 1.0}

    monkeypatch.setattr(bench, "run_baseline", wrong_baseline)
    with pytest.raises(ValueError, match="the current path and the baseline wrote different rows: .*lum_target_match"):
        run_with("bench.join", {**TINY, "dir": str(tmp_path / "bench")}, quick=True, warehouse=str(tmp_path / "x"))


def test_bench_join_rejects_unknown_option(tmp_path):
    from stages.pipeline.registry import run_with

    with pytest.raises(ValueError, match="unknown bench.join option.*rows"):
        run_with("bench.join", {"rows": 5}, quick=True, warehouse=str(tmp_path))
