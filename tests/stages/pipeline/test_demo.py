"""``lum demo --quick`` end to end on ML-100K (slow): bootstrap, three dag.test runs, query, evaluate, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stages.pipeline.registry import run_with
from stages.pipeline.report import write_report
from stages.warehouse.facade import Warehouse


def test_report_writes_html_and_plots(tmp_path):
    path = write_report(str(tmp_path), {
        "title": "t", "summary": {"hr@10": 0.1},
        "loss": {"points": [(10, 5.0), (20, 4.0)], "daily": [("2000-01-02", 3.9)]},
        "retrieval": {"hr@10": 0.1, "ndcg@10": 0.05}, "auc": {"auc_without_lum": 0.7, "auc_with_lum": 0.72, "lift": 0.02},
        "timings": [{"ds": "2000-01-02", "sequences": 1.0, "pretrain": 2.0, "infer": 0.5, "join": 1.5}],
        "query": [{"user_id": 1, "condition": "category=Comedy", "embedding": [0.1] * 16}]})
    page = Path(path).read_text()
    for png in ("loss.png", "retrieval.png", "auc.png", "timings.png"):
        assert f'src="{png}"' in page and (tmp_path / png).stat().st_size > 1000
    assert "category=Comedy" in page and "(16 values)" in page


@pytest.mark.slow
def test_quick_demo(airflow_db_for_demo, ml100k_warehouse, copy_warehouse, tmp_path, capsys):
    wh = copy_warehouse(ml100k_warehouse)
    out = tmp_path / "demo"
    summary = run_with("demo", {"out_dir": str(out), "days": 3, "quick": True}, warehouse=wh)
    printed = capsys.readouterr().out
    assert "lum query" in printed and "HR@10" in printed and "lift" in printed and "vs popularity" in printed
    window = [summary["start"], None, summary["end"]]
    parts = Warehouse(wh).partitions("dlrm_training")
    assert len(parts) == 3 and parts[0] == window[0] and parts[-1] == window[-1]
    assert Warehouse(wh).partitions("user_knowledge") == [summary["bootstrap_ds"], *parts]
    assert 0.0 <= summary["hr@10"] <= 1.0
    assert 0.0 < summary["auc_without_lum"] < 1.0 and 0.0 < summary["auc_with_lum"] < 1.0
    saved = json.loads((out / "demo.json").read_text())
    assert [t["ds"] for t in saved["timings"]] == [summary["bootstrap_ds"], *parts]
    assert all(set(t) >= {"sequences", "pretrain", "infer", "join"} for t in saved["timings"][1:])
    assert [r["consumer"] for r in saved["evaluate"]] == ["dlrm", "lr"]
    assert saved["knowledge"]["users_evaluated"] > 0 and 0.0 <= summary["knowledge_hr@10"] <= 1.0
    page = (out / "index.html").read_text()
    assert "Lift per consumer" in page and "knowledge tables alone vs popularity" in page
    for png in ("loss.png", "retrieval.png", "auc.png", "timings.png"):
        assert (out / png).is_file() and png in page


@pytest.fixture
def airflow_db_for_demo():
    """dag.test needs the metadata tables (the demo's initdb also creates them; reset for isolation)."""
    from airflow.utils import db

    db.resetdb()
