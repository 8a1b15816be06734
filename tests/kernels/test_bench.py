"""``lum bench kernels`` on CPU at toy sizes: every baseline computes the same attention as the torch path."""

from __future__ import annotations

import pytest

from stages.bench.kernels import make_batch, run_bench, useful_flops

TINY = {"users": 4, "prefix": 24, "conditions": 3, "heads": 4, "kv_heads": 2, "head_dim": 16, "repeats": 1,
        "sweep": False,
            "cpu_threads": 1}


def test_bench_rows_agree_with_torch_path(warehouse):
    report = run_bench(dict(TINY, methods=["torch_grouped", "sdpa_dense", "naive", "triton"]), quick=True,
                       warehouse=warehouse)
    rows = {r["method"]: r for r in report["table"]}
    assert set(rows) == {"torch_grouped", "sdpa_dense", "naive", "triton"}
    for name in ("sdpa_dense", "naive"):
        assert rows[name]["ms"] > 0 and rows[name]["max_abs_diff"] < 1e-5, rows[name]
    assert rows["triton"]["ms"] is None and "no CUDA" in rows["triton"]["note"]
    assert report["summary"]["device"] == "cpu" and report["notes"]
    assert "torch_grouped_speedup_vs_naive" in report["summary"]


def test_useful_flops_counts_only_visible_pairs():
    import torch

    batch = make_batch(2, 4, 2, 1, 1, 8, torch.float32, "cpu", 0.0, 0)  # prefixes 4, N 2: L = 6
    # per user: causal prefix 1+2+3+4 = 10 pairs, each condition sees 4 + itself = 5 pairs -> 20 pairs
    assert useful_flops(batch) == 4.0 * 1 * 8 * 2 * 20


def test_bad_option_names_the_key(warehouse):
    with pytest.raises(ValueError, match="methods"):
        run_bench(dict(TINY, methods=["cudnn"]), quick=True, warehouse=warehouse)
    with pytest.raises(ValueError, match="unknown"):
        run_bench(dict(TINY, batch=3), quick=True, warehouse=warehouse)


@pytest.mark.slow
def test_flex_attention_baseline_matches(warehouse):
    """Compiled FlexAttention on CPU (~80 s compile on 2 cores): its block mask encodes the same rule."""
    report = run_bench(dict(TINY, methods=["torch_grouped", "flex_compiled"], flex=True), quick=True,
                       warehouse=warehouse)
    flex = next(r for r in report["table"] if r["method"] == "flex_compiled")
    assert flex["ms"] is not None and flex["max_abs_diff"] < 1e-5, flex
