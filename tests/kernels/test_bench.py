"""``kernels.bench`` on CPU at toy sizes: every baseline computes the same attention as the torch path."""

from __future__ import annotations

import json

import pytest
import torch

from kernels.bench import QUICK, Config, run
from kernels.bench_methods import make_batch, useful_flops
from stages.cli.app import main
from stages.core.config import from_mapping

TINY = {"users": 4, "prefix": 24, "conditions": 3, "heads": 4, "kv_heads": 2, "head_dim": 16, "repeats": 1,
        "sweep": False, "cpu_threads": 1}


def _cfg(**options) -> Config:
    return from_mapping(Config, {**QUICK, **TINY, **options})


def test_bench_rows_agree_with_torch_path():
    report = run(_cfg(methods=["torch_grouped", "sdpa_dense", "naive", "triton"]))
    rows = {r["method"]: r for r in report["table"]}
    assert set(rows) == {"torch_grouped", "sdpa_dense", "naive", "triton"}
    for name in ("sdpa_dense", "naive"):
        assert rows[name]["ms"] > 0 and rows[name]["max_abs_diff"] < 1e-5, rows[name]
    assert rows["triton"]["ms"] is None and "no CUDA" in rows["triton"]["note"]
    assert report["summary"]["device"] == "cpu" and report["notes"]
    assert "torch_grouped_speedup_vs_naive" in report["summary"]
    json.dumps(report)  # the report is JSON as it is


def test_useful_flops_counts_only_visible_pairs():
    batch = make_batch(2, 4, 2, 1, 1, 8, torch.float32, "cpu", 0.0, 0)  # prefixes 4, N 2: L = 6
    # per user: causal prefix 1+2+3+4 = 10 pairs, each condition sees 4 + itself = 5 pairs -> 20 pairs
    assert useful_flops(batch) == 4.0 * 1 * 8 * 2 * 20


def test_bad_option_names_the_key():
    with pytest.raises(ValueError, match="methods"):
        run(_cfg(methods=["cudnn"]))
    with pytest.raises(ValueError, match="unknown"):
        _cfg(batch=3)


def test_lum_bench_kernels_quick_writes_the_report(tmp_path, capsys):
    out = tmp_path / "bench_kernels.json"
    code = main(["bench", "kernels", "--quick", "--out", str(out), "--set", "methods=[\"torch_grouped\"]",
                 "--set", "users=3", "--warehouse", str(tmp_path / "wh")])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["config"]["users"] == 3 and report["config"]["prefix"] == QUICK["prefix"]
    assert [r["method"] for r in report["table"]] == ["torch_grouped"]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["bench"] == "kernels"


@pytest.mark.slow
def test_flex_attention_baseline_matches():
    """Compiled FlexAttention on CPU (a slow compile on 2 cores): its block mask encodes the same rule."""
    report = run(_cfg(methods=["torch_grouped", "flex_compiled"], flex=True))
    flex = next(r for r in report["table"] if r["method"] == "flex_compiled")
    assert flex["ms"] is not None and flex["max_abs_diff"] < 1e-5, flex
