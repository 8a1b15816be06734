"""Dense-mask SDPA (kernels.sdpa_mask) and the packed causal plan against the float64 reference."""

from __future__ import annotations

import logging

import pytest
import torch
from jagged_batches import jagged_batch

import kernels.dispatch as dispatch
from kernels import grouped_query_attention, plan_causal_attention
from kernels.dispatch import resolve_causal_backend
from kernels.reference import reference_attention
from kernels.sdpa_mask import dense_grid, mask_layout, masked_attention


def test_dense_grid_positions_restart_per_sequence():
    cu = torch.tensor([0, 3, 5, 9], dtype=torch.int32)
    row, col, _seq, pos, n_rows, width = dense_grid(cu, torch.tensor([0, 0, 1]), 6)
    assert (n_rows, width) == (2, 6)
    assert row.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert col.tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3]
    assert pos.tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3]
    with pytest.raises(ValueError, match="row_tokens"):
        dense_grid(cu, torch.tensor([0, 0, 0]), 6)


def test_masked_attention_matches_kernel_reference():
    torch.manual_seed(1)
    cu = torch.tensor([0, 5, 6, 14], dtype=torch.int32)
    prefix = torch.tensor([3, 1, 8], dtype=torch.int32)
    q, k, v = (torch.randn(14, 2, 8) for _ in range(3))
    ours = masked_attention(q, k, v, mask_layout(cu, prefix))
    ref = grouped_query_attention(q, k, v, cu, prefix, backend="torch")
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("heads,kv_heads", [(2, 2), (4, 2)])
def test_sdpa_mask_backend_vs_reference(edge_batch, heads, kv_heads):
    q, k, v, cu, pl = edge_batch(heads=heads, kv_heads=kv_heads, head_dim=16)
    out = grouped_query_attention(q, k, v, cu, pl, scale=0.3, backend="sdpa_mask")
    ref = reference_attention(q, k, v, cu, pl, scale=0.3)
    torch.testing.assert_close(out.double(), ref.double(), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("backend", ["sdpa_mask", "torch", "triton"])
def test_causal_plan_vs_reference_with_shared_rows(backend):
    """Sequences packed two to a dense row (sdpa_mask) or unpadded (torch, triton): every layer's attend
    equals plain packed causal attention, and gradients flow."""
    lengths = [5, 3, 7, 1, 4]
    q, k, v, cu, pl = jagged_batch(lengths, lengths, heads=4, kv_heads=2, head_dim=16, requires_grad=True)
    rows = torch.tensor([0, 0, 1, 1, 2])
    attend = plan_causal_attention(cu, backend=backend, row_of_seq=rows, row_tokens=8)
    # non-contiguous views, as a model's fused qkv projection hands them over
    out = attend(q.transpose(0, 1).contiguous().transpose(0, 1), k, v)
    ref = reference_attention(q, k, v, cu, pl)
    torch.testing.assert_close(out.double(), ref.double(), atol=2e-5, rtol=2e-5)
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_causal_plan_checks_the_batch_and_the_backend():
    cu = torch.tensor([0, 4, 6], dtype=torch.int32)
    with pytest.raises(ValueError, match="cu_seqlens must be int32"):
        plan_causal_attention(cu.long())
    with pytest.raises(ValueError, match="non-decreasing"):
        plan_causal_attention(torch.tensor([0, 4, 3], dtype=torch.int32))
    with pytest.raises(ValueError, match="backend must be one of"):
        plan_causal_attention(cu, backend="flash")
    with pytest.raises(ValueError, match="planned batch has 6"):
        plan_causal_attention(cu, backend="torch")(*(torch.randn(5, 2, 16) for _ in range(3)))
    q = torch.randn(6, 2, 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="backend 'varlen' needs CUDA"):
        plan_causal_attention(cu, backend="varlen")(q, q, q)


def test_varlen_refuses_grouped_batches_and_fp32():
    q, k, v, cu, pl = jagged_batch([5, 3], [4, 1], dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="causal only"):
        grouped_query_attention(q, k, v, cu, pl, backend="varlen")
    q, k, v, cu, pl = jagged_batch([5, 3], [5, 3])
    with pytest.raises(ValueError, match="fp16 or bf16"):
        grouped_query_attention(q, k, v, cu, pl, backend="varlen")


def test_causal_auto_is_sdpa_mask_without_cuda_and_logs_once(monkeypatch, caplog):
    monkeypatch.setattr(dispatch, "_logged", set())
    with caplog.at_level(logging.INFO, logger="kernels.dispatch"):
        assert resolve_causal_backend("auto", torch.device("cpu")) == "sdpa_mask"
        assert resolve_causal_backend("auto", torch.device("cpu")) == "sdpa_mask"
    lines = [r.getMessage() for r in caplog.records if "plan_causal_attention" in r.getMessage()]
    assert len(lines) == 1 and "backend=sdpa_mask" in lines[0]
    monkeypatch.setattr(dispatch, "available", lambda device: device.type == "cuda")
    assert resolve_causal_backend("auto", torch.device("cuda")) == "varlen"
    assert resolve_causal_backend("torch", torch.device("cuda")) == "torch"
