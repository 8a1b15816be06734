"""``lum bench infer`` quick mode: both modes run on the same users and agree (stages.bench.infer)."""

from __future__ import annotations

import json

import pytest

from stages.bench.infer import QUICK, Config, effective, run, run_bench, useful_flops


def test_quick_bench_reports_both_modes(warehouse):
    report = run_bench({}, quick=True, warehouse=warehouse)
    rows = {r["mode"]: r for r in report["table"]}
    assert set(rows) == {"grouped", "naive"}
    assert rows["naive"]["forwards"] == rows["grouped"]["forwards"] * report["options"]["n_conditions"]
    s = report["summary"]
    assert s["max_abs_diff"] < 1e-4  # same embeddings from both modes
    assert s["grouped_users_per_s"] > 0 and s["naive_users_per_s"] > 0
    assert s["speedup"] == pytest.approx(rows["grouped"]["users_per_s"] / rows["naive"]["users_per_s"], rel=1e-2)
    json.dumps(report)  # JSON-able


def test_useful_flops_counts_projection_mlp_and_attention():
    o = {"users": 1, "d_model": 2, "d_ff": 4, "n_layers": 1, "prefix_tokens": 2, "n_conditions": 1}
    # per token 2*2*(8+8)=64 over 3 tokens, attention 4*2*(3+2+1)=48
    assert useful_flops(o) == 3 * 64 + 48


def test_bench_rejects_unknown_options(warehouse):
    with pytest.raises(ValueError, match="unknown bench infer option"):
        run_bench({"userz": 3}, quick=True, warehouse=warehouse)


def test_quick_applies_only_to_options_left_at_their_default():
    cfg = effective(Config(quick=True, n_conditions=2))
    assert cfg.n_conditions == 2 and cfg.users == QUICK["users"] and cfg.repeats == 1
    assert effective(Config(users=5)) == Config(users=5)  # no quick: unchanged


def test_run_takes_a_config(warehouse):
    report = run(Config(quick=True, users=3, repeats=1), warehouse=warehouse)
    assert report["quick"] and report["options"]["users"] == 3 and "quick" not in report["options"]
    assert {r["mode"] for r in report["table"]} == {"grouped", "naive"}
    assert report["summary"]["max_abs_diff"] < 1e-4
