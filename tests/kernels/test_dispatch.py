"""Dispatcher: one-line ValueErrors naming the bad argument (before any launch) and backend choice."""

from __future__ import annotations

import logging

import pytest
import torch
from jagged_batches import jagged_batch

import kernels.dispatch as dispatch
from kernels import grouped_query_attention
from kernels.dispatch import resolve_backend


def _good():
    return jagged_batch([5, 3], [4, 1], heads=4, kv_heads=2, head_dim=32)


def _bad_cases():
    q, k, v, cu, pl = _good()
    return {
        "q 3-D": ((q[:, 0].contiguous(), k, v, cu, pl), "q must be 3-D"),
        "heads": ((q[:, :3].contiguous(), k, v, cu, pl), "multiple of k/v heads"),
        "k shape": ((q, k[:-1].contiguous(), v, cu, pl), "k shape"),
        "v shape": ((q, k, v[:, :1].contiguous(), cu, pl), "v shape"),
        "dtype": ((q, k.double(), v, cu, pl), "k/v dtypes"),
        "int dtype": ((q.long(), k.long(), v.long(), cu, pl), "q dtype"),
        "contiguous": ((q.transpose(0, 1).contiguous().transpose(0, 1), k, v, cu, pl),
                       "q must be contiguous"),
        "cu int64": ((q, k, v, cu.long(), pl), "cu_seqlens must be int32"),
        "prefix int64": ((q, k, v, cu, pl.long()), "prefix_lens must be int32"),
        "cu end": ((q, k, v, torch.tensor([0, 5, 7], dtype=torch.int32), pl), r"cu_seqlens\[-1\]=7"),
        "cu start": ((q, k, v, torch.tensor([1, 5, 8], dtype=torch.int32), pl), r"cu_seqlens\[0\]"),
        "cu order": ((q, k, v, torch.tensor([0, 6, 5, 8], dtype=torch.int32),
                      torch.tensor([0, 0, 0], dtype=torch.int32)), "non-decreasing"),
        "prefix long": ((q, k, v, cu, torch.tensor([6, 1], dtype=torch.int32)), r"prefix_lens\[0\]=6"),
        "prefix negative": ((q, k, v, cu, torch.tensor([4, -1], dtype=torch.int32)), r"prefix_lens\[1\]=-1"),
        "prefix shape": ((q, k, v, cu, torch.tensor([4], dtype=torch.int32)), "prefix_lens shape"),
        "not tensor": ((q, k, v, [0, 5, 8], pl), "cu_seqlens must be a torch.Tensor"),
    }


@pytest.mark.parametrize("case", sorted(_bad_cases()))
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_bad_input_raises_one_line_value_error(case, backend):
    args, pattern = _bad_cases()[case]
    with pytest.raises(ValueError, match=pattern) as err:
        grouped_query_attention(*args, backend=backend)
    assert "\n" not in str(err.value)


def test_bad_scale_and_backend():
    q, k, v, cu, pl = _good()
    with pytest.raises(ValueError, match="scale"):
        grouped_query_attention(q, k, v, cu, pl, scale=-1.0)
    with pytest.raises(ValueError, match="backend"):
        grouped_query_attention(q, k, v, cu, pl, backend="cuda")


def test_triton_head_dim_limit():
    q, k, v, cu, pl = jagged_batch([4], [2], head_dim=8)
    with pytest.raises(ValueError, match="head dim"):
        grouped_query_attention(q, k, v, cu, pl, backend="triton")


def test_auto_picks_torch_on_cpu_and_env_overrides(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("LUM_ATTENTION_BACKEND", raising=False)
    assert resolve_backend("auto", cpu, needs_grad=False, causal_only=False) == "torch"
    assert resolve_backend("auto", torch.device("cuda"), needs_grad=False, causal_only=False) == "triton"
    assert resolve_backend("auto", torch.device("cuda"), needs_grad=True, causal_only=False) == "torch"
    assert resolve_backend("auto", torch.device("cuda"), needs_grad=True, causal_only=True) == "triton"
    monkeypatch.setenv("LUM_ATTENTION_BACKEND", "triton")
    assert resolve_backend("auto", cpu, needs_grad=False, causal_only=False) == "triton"
    assert resolve_backend("torch", cpu, needs_grad=False, causal_only=False) == "torch"  # explicit wins
    monkeypatch.setenv("LUM_ATTENTION_BACKEND", "fast")
    with pytest.raises(ValueError, match="LUM_ATTENTION_BACKEND"):
        resolve_backend("auto", cpu, needs_grad=False, causal_only=False)


def test_env_backend_runs_triton_and_logs_once(monkeypatch, caplog):
    monkeypatch.setenv("LUM_ATTENTION_BACKEND", "triton")
    monkeypatch.setattr(dispatch, "_logged", set())
    q, k, v, cu, pl = _good()
    with caplog.at_level(logging.INFO, logger="kernels.dispatch"):
        first = grouped_query_attention(q, k, v, cu, pl)
        grouped_query_attention(q, k, v, cu, pl)
    lines = [r.getMessage() for r in caplog.records if "backend=" in r.getMessage()]
    assert len(lines) == 1 and "backend=triton" in lines[0]
    torch.testing.assert_close(first, grouped_query_attention(q, k, v, cu, pl, backend="torch"),
                               atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_grouped_plan_equals_per_call_and_tiles_once(backend, monkeypatch):
    """A plan gives each layer the per-call result; the batch is copied to the host and tiled once."""
    import kernels.checks as checks
    import kernels.tiles as tiles
    import kernels.triton_grouped as triton_grouped

    q, k, v, cu, pl = jagged_batch([70, 17, 3, 0, 40], [64, 16, 0, 0, 22], heads=4, kv_heads=2, head_dim=32)
    layers = [(q + n, k * (n + 1), v - n) for n in range(3)]  # three layers of one forward
    wants = [grouped_query_attention(*qkv, cu, pl, scale=0.3, backend=backend) for qkv in layers]
    built, copies = [], []

    def counting(calls, fn):
        return lambda *a, **kw: calls.append(1) or fn(*a, **kw)
    monkeypatch.setattr(tiles, "build_tiles", counting(built, tiles.build_tiles))
    monkeypatch.setattr(triton_grouped, "build_tiles", counting(built, triton_grouped.build_tiles))
    monkeypatch.setattr(checks, "check_offsets", counting(copies, checks.check_offsets))
    monkeypatch.setattr(dispatch, "check_offsets", counting(copies, dispatch.check_offsets))
    attend = dispatch.plan_grouped_attention(cu, pl, backend=backend, scale=0.3)
    for qkv, want in zip(layers, wants):
        torch.testing.assert_close(attend(*qkv), want, atol=0, rtol=0)
    assert len(copies) == 1
    assert len(built) == (1 if backend == "triton" else 0)


def test_grouped_plan_checks_the_batch_then_each_call():
    q, k, v, cu, pl = _good()
    with pytest.raises(ValueError, match=r"prefix_lens\[1\]=5 must be in \[0, length=3\]"):
        dispatch.plan_grouped_attention(cu, torch.tensor([4, 5], dtype=torch.int32))
    with pytest.raises(ValueError, match="backend must be one of"):
        dispatch.plan_grouped_attention(cu, pl, backend="cuda")
    attend = dispatch.plan_grouped_attention(cu, pl)
    with pytest.raises(ValueError, match="planned batch has 8"):
        attend(q[:-1].contiguous(), k[:-1].contiguous(), v[:-1].contiguous())
    with pytest.raises(ValueError, match="k/v dtypes"):
        attend(q, k.double(), v)
