"""Triton backward (plain packed causal: prefix_lens == lengths) against autograd of the reference."""

from __future__ import annotations

import pytest
import torch
from jagged_batches import jagged_batch

from kernels import grouped_query_attention, plan_causal_attention
from kernels.reference import reference_attention


@pytest.mark.parametrize("dtype,heads,kv_heads,head_dim,tol", [
    (torch.float32, 4, 2, 48, 2e-5),
    (torch.float32, 2, 2, 32, 2e-5),
    (torch.float16, 2, 1, 64, 2e-2),
])
def test_backward_matches_reference(dtype, heads, kv_heads, head_dim, tol):
    lengths = [3, 70, 0, 1, 40]
    q, k, v, cu, pl = jagged_batch(lengths, lengths, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                                   dtype=dtype, requires_grad=True)
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(3)).to(dtype)
    out = grouped_query_attention(q, k, v, cu, pl, backend="triton")
    got = torch.autograd.grad(out, (q, k, v), grad_out)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    want = torch.autograd.grad(reference_attention(q64, k64, v64, cu, pl), (q64, k64, v64), grad_out.double())
    for name, g, w in zip("qkv", got, want):
        assert g.dtype == dtype, name
        torch.testing.assert_close(g.double(), w, atol=tol, rtol=tol, msg=lambda m, n=name: f"d{n}: {m}")


def test_triton_backward_refuses_grouped_batches():
    q, k, v, cu, pl = jagged_batch([10, 5], [8, 5], requires_grad=True)
    with pytest.raises(ValueError, match="backward"):
        grouped_query_attention(q, k, v, cu, pl, backend="triton")


def test_auto_with_grad_on_grouped_batch_uses_torch_path():
    q, k, v, cu, pl = jagged_batch([10, 5], [8, 5], dtype=torch.float64, requires_grad=True)
    out = grouped_query_attention(q, k, v, cu, pl)
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_causal_plan_on_triton_tiles_once_and_trains(monkeypatch):
    """plan_causal_attention(backend="triton"): two layers, forward and backward, one tile build."""
    import kernels.tiles as tiles

    lengths = [3, 70, 0, 40]
    q, k, v, cu, pl = jagged_batch(lengths, lengths, heads=2, head_dim=32, requires_grad=True)
    built = []
    real = tiles.build_tiles
    monkeypatch.setattr(tiles, "build_tiles", lambda *a, **kw: built.append(1) or real(*a, **kw))
    attend = plan_causal_attention(cu, backend="triton")
    out = attend(attend(q, k, v), k, v)  # the second layer reads the first's output as its queries
    got = torch.autograd.grad(out.sum(), (q, k, v))
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = reference_attention(reference_attention(q64, k64, v64, cu, pl), k64, v64, cu, pl)
    want = torch.autograd.grad(ref.sum(), (q64, k64, v64))
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=2e-5)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, atol=1e-4, rtol=1e-4)
    assert len(built) == 1
