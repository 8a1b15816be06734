"""The torch path (CPU inference/training) against the float64 explicit-mask reference."""

from __future__ import annotations

import pytest
import torch
from jagged_batches import EDGE_LENGTHS, EDGE_PREFIXES, jagged_batch, random_lengths

from kernels import grouped_query_attention
from kernels.reference import grouped_mask, reference_attention
from kernels.torch_grouped import torch_grouped_attention

TOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2, torch.float64: 1e-12}


def test_mask_matches_contract():
    mask = grouped_mask(5, 3)
    expected = torch.tensor([[1, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0],
                             [1, 1, 1, 0, 0],
                             [1, 1, 1, 1, 0],
                             [1, 1, 1, 0, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("heads,kv_heads", [(2, 2), (4, 2), (4, 1)])
def test_edge_cases_vs_reference(edge_batch, dtype, heads, kv_heads):
    q, k, v, cu, pl = edge_batch(heads=heads, kv_heads=kv_heads, head_dim=48, dtype=dtype)
    out = grouped_query_attention(q, k, v, cu, pl, backend="torch")
    ref = reference_attention(q, k, v, cu, pl)
    assert out.dtype == dtype and out.shape == q.shape
    torch.testing.assert_close(out.double(), ref.double(), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("seed", range(4))
def test_random_jagged_vs_reference(seed):
    lengths, prefixes = random_lengths(12, max_prefix=90, max_cond=9, seed=seed)
    q, k, v, cu, pl = jagged_batch(lengths, prefixes, heads=4, kv_heads=2, head_dim=80, seed=seed)
    out = torch_grouped_attention(q, k, v, cu, pl, scale=0.3)
    ref = reference_attention(q, k, v, cu, pl, scale=0.3)
    torch.testing.assert_close(out.double(), ref.double(), atol=2e-5, rtol=2e-5)


def test_condition_tokens_do_not_see_each_other():
    """Changing condition token j's k/v changes no other condition token's output."""
    q, k, v, cu, pl = jagged_batch([12], [8], heads=2, head_dim=32)
    before = grouped_query_attention(q, k, v, cu, pl)
    k2, v2 = k.clone(), v.clone()
    k2[9], v2[9] = 5.0, -3.0
    after = grouped_query_attention(q, k2, v2, cu, pl)
    others = [i for i in range(12) if i != 9]
    torch.testing.assert_close(after[others], before[others], atol=0, rtol=0)
    assert not torch.allclose(after[9], before[9])


def test_nan_in_one_sequence_does_not_leak():
    q, k, v, cu, pl = jagged_batch(EDGE_LENGTHS, EDGE_PREFIXES, heads=2, head_dim=32)
    start, end = int(cu[7]), int(cu[8])
    q[start:end], k[start:end], v[start:end] = float("nan"), float("nan"), float("nan")
    out = grouped_query_attention(q, k, v, cu, pl, backend="torch")
    inside = torch.zeros(out.shape[0], dtype=torch.bool)
    inside[start:end] = True
    assert torch.isfinite(out[~inside]).all()
    assert torch.isnan(out[inside]).all()


@pytest.mark.parametrize("prefixes", [[4, 9, 0, 6], [4, 20, 1, 6]])
def test_backward_vs_reference_autograd(prefixes):
    """Autograd of the torch path == autograd of the float64 reference (grouped and plain causal)."""
    lengths = [4, 20, 3, 6]
    q, k, v, cu, pl = jagged_batch(lengths, prefixes, heads=4, kv_heads=2, head_dim=32,
                                   dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(q.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad(grouped_query_attention(q, k, v, cu, pl), (q, k, v), grad_out)
    want = torch.autograd.grad(reference_attention(q, k, v, cu, pl), (q, k, v), grad_out)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-10)


def test_empty_batch():
    q, k, v, cu, pl = jagged_batch([0, 0], [0, 0])
    assert grouped_query_attention(q, k, v, cu, pl).shape == (0, 2, 32)


def test_bucket_padding_bound():
    """Buckets never shrink a length and pad by < 25% beyond 8 (exact up to 8)."""
    from kernels.torch_grouped import _bucket

    for n in range(3000):
        b = _bucket(n)
        assert b >= n
        assert b == n if n <= 8 else b < 1.25 * n


def test_layout_cached_across_calls_and_shared_by_training():
    """The second call with the same lengths reuses the cached layout; a layout first built under
    inference_mode still serves an autograd call (index tensors must not be inference tensors)."""
    from kernels.torch_grouped import _layout

    lengths, prefixes = [7, 30, 0, 12, 3], [5, 22, 0, 12, 1]
    q, k, v, cu, pl = jagged_batch(lengths, prefixes, heads=4, kv_heads=2, head_dim=16, dtype=torch.float64,
                                   seed=3)
    _layout.cache_clear()
    with torch.inference_mode():
        first = grouped_query_attention(q, k, v, cu, pl, backend="torch")
    assert _layout.cache_info().misses == 1
    qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
    out = grouped_query_attention(qg, kg, vg, cu, pl, backend="torch")
    assert _layout.cache_info().hits == 1
    torch.testing.assert_close(out.detach(), first, atol=0, rtol=0)
    grad_out = torch.randn(q.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    got = torch.autograd.grad(out, (qg, kg, vg), grad_out)
    qr, kr, vr = (x.clone().requires_grad_() for x in (q, k, v))
    want = torch.autograd.grad(reference_attention(qr, kr, vr, cu, pl), (qr, kr, vr), grad_out)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-10)


def test_many_buckets_and_non_contiguous_inputs():
    """Prefixes spread over several length buckets; q/k/v given as non-contiguous views."""
    lengths, prefixes = random_lengths(40, max_prefix=300, max_cond=20, seed=7)
    q, k, v, cu, pl = jagged_batch(lengths, prefixes, heads=2, head_dim=24, seed=7)
    qs, ks, vs = (torch.stack([x, x], dim=-1)[..., 0] for x in (q, k, v))  # same values, stride 2
    assert not qs.is_contiguous()
    out = torch_grouped_attention(qs, ks, vs, cu, pl)
    torch.testing.assert_close(out.double(), reference_attention(q, k, v, cu, pl).double(), atol=2e-5,
                               rtol=2e-5)
