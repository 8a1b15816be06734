"""``lum bench infer`` quick mode: both modes run on the same users and agree (stages.bench.infer)."""

from __future__ import annotations

import json

import pytest

from stages.bench.infer import QUICK, Config, run, useful_flops
from stages.pipeline.registry import build_config, run_with


def test_quick_bench_reports_both_modes(warehouse):
    report = run_with("bench.infer", {}, quick=True, warehouse=warehouse)
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
    with pytest.raises(ValueError, match="unknown bench.infer option"):
        run_with("bench.infer", {"userz": 3}, quick=True, warehouse=warehouse)


def test_quick_sizes_give_way_to_explicit_options():
    cfg = build_config("bench.infer", overrides={"n_conditions": 2, "users": 256}, quick=True)
    assert cfg.n_conditions == 2 and cfg.users == 256 and cfg.repeats == QUICK["repeats"] == 1
    assert build_config("bench.infer", overrides={"users": 5}) == Config(users=5)  # no quick: defaults


def test_run_takes_a_config(warehouse):
    report = run(Config(**{**QUICK, "users": 3}), warehouse=warehouse)
    assert report["options"]["users"] == 3 and report["options"]["prefix_tokens"] == QUICK["prefix_tokens"]
    assert {r["mode"] for r in report["table"]} == {"grouped", "naive"}
    assert report["summary"]["max_abs_diff"] < 1e-4
