"""``make gpu-check``'s script: never pretends without CUDA; one report, rewritten after every part."""

from __future__ import annotations

import json
import sys

import pytest

from stages.bench import gpu_check


def test_without_cuda_it_says_so_and_exits_zero(tmp_path, monkeypatch, capsys):
    out = tmp_path / "report.json"
    monkeypatch.setenv("LUM_GPU_CHECK_OUT", str(out))
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    assert gpu_check.main() == 0
    assert "no CUDA device: gpu-check not run" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["status"] == "not run" and report["reason"] == "no CUDA device: gpu-check not run"


def test_report_path_prefers_the_env_then_out(tmp_path, monkeypatch):
    monkeypatch.delenv("LUM_GPU_CHECK_OUT", raising=False)
    monkeypatch.setenv("OUT", str(tmp_path))
    assert gpu_check.report_path() == tmp_path / "gpu-check.json"
    monkeypatch.setenv("LUM_GPU_CHECK_OUT", str(tmp_path / "x.json"))
    assert gpu_check.report_path() == tmp_path / "x.json"


def test_a_failing_part_fails_the_report_and_the_rest_still_runs(tmp_path, monkeypatch):
    seen = []

    def ok(workdir):
        seen.append(json.loads((tmp_path / "r.json").read_text()) if (tmp_path / "r.json").exists() else None)
        return {"passed": True}

    def broken(workdir):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(gpu_check, "PARTS", (("a", ok), ("b", broken), ("c", ok)))
    report = gpu_check.run(tmp_path / "r.json", budget_s=60)
    assert report["status"] == "failed"
    assert report["parts"]["b"] == {"passed": False, "error": "RuntimeError: kernel exploded",
                                    "seconds": pytest.approx(0, abs=1)}
    assert report["parts"]["c"]["passed"]
    assert seen[1]["parts"]["b"]["error"]  # written before part c started


def test_a_timed_out_subprocess_keeps_its_log(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "REPO", tmp_path)
    code, tail = gpu_check._subprocess([sys.executable, "-c", "import time; print('started', flush=True); "
                                        "time.sleep(30)"], 2, tmp_path / "part.log")
    assert code is None and "started" in tail and "started" in (tmp_path / "part.log").read_text()


def test_parts_after_the_budget_are_not_run(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "PARTS", (("a", lambda w: {"passed": True}), ("b", lambda w: {"passed": True})))
    report = gpu_check.run(tmp_path / "r.json", budget_s=-1)
    assert report["status"] == "failed"
    assert all(p["status"].startswith("not run: time budget") for p in report["parts"].values())
