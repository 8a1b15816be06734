"""The gpu-check model parts on CPU: the training check learns, and inference rows carry users/s."""

from __future__ import annotations

import sys
import types

import torch

from stages.bench import gpu_model


def test_training_check_loss_falls_on_cpu():
    result = gpu_model.training_check(torch.device("cpu"), backend="sdpa_mask", steps=3, sequences=3)
    assert result["finite"] and result["decreased"] and result["passed"], result["losses"]
    assert result["max_abs_diff_vs_sdpa_mask"] == 0.0


def test_inference_check_rows(monkeypatch):
    calls = []

    def fake_do_bench(fn, return_mode):  # one call instead of CUDA events: the rows' arithmetic is checked
        calls.append(fn())
        return 2.0

    monkeypatch.setitem(sys.modules, "triton.testing", types.SimpleNamespace(do_bench=fake_do_bench))
    result = gpu_model.inference_check(torch.device("cpu"), users=3, history=5, conditions=2,
                                       backends=("torch", "sdpa_mask"), dtypes=("float32",))
    rows = result["rows"]
    assert [r["backend"] for r in rows] == ["torch", "sdpa_mask"] and len(calls) == 2
    assert rows[0]["users_per_s"] == 1500 and rows[0]["history_tokens"] == 10
    assert rows[1]["max_abs_diff_vs_torch"] < 1e-5
