"""Every backend natively on CUDA against the float64 reference (marker ``gpu``; ``make gpu-check`` runs it).

Each test decides its own skip: no CUDA device, or TRITON_INTERPRET=1 (tests/conftest.py sets it for CPU
runs; ``TRITON_INTERPRET=0`` runs the compiled kernels). The forward tests pin the autotuner to one config
at a time (64x32 and 128x64, condition tiles with BLOCK_N 32 and 64), so both sub-tile layouts are checked and compile time stays bounded; one
test runs the full autotune at a serving size. Inputs are fresh random draws; outputs are poisoned first.
"""

from __future__ import annotations

import os

import pytest
import torch
from jagged_batches import EDGE_LENGTHS, EDGE_PREFIXES, jagged_batch, random_lengths

from kernels import grouped_query_attention, plan_causal_attention, plan_grouped_attention
from kernels.dispatch import resolve_backend, resolve_causal_backend
from kernels.reference import reference_attention
from kernels.varlen import available

pytestmark = pytest.mark.gpu
TOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
PINNED = {"64x32": (64, 32, 4), "128x64": (128, 64, 8)}


def _cuda() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1: the GPU tests need compiled Triton (set TRITON_INTERPRET=0)")
    return torch.device("cuda")


def _batch(lengths, prefixes, *, requires_grad=False, **kw):
    dev = _cuda()
    q, k, v, cu, pl = jagged_batch(lengths, prefixes, **kw)
    q, k, v = (x.to(dev).requires_grad_(requires_grad) for x in (q, k, v))
    return q, k, v, cu.to(dev), pl.to(dev)


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double(), want.detach().double()
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


def _pin(monkeypatch, name: str) -> str:
    """The forward autotuner reduced to one config (cache cleared), so that config is the one tested."""
    import triton

    from kernels import triton_forward

    bm, bn, warps = PINNED[name]
    monkeypatch.setattr(triton_forward._fwd_tuned, "configs",
                        [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=2)])
    monkeypatch.setattr(triton_forward._fwd_tuned, "cache", {})
    # condition tiles: BLOCK_M is the tile's rows (16/32/64, set by the launch); BLOCK_N as the history's
    monkeypatch.setattr(triton_forward._cond_tuned, "configs",
                        [triton.Config({"BLOCK_N": bn}, num_warps=4, num_stages=2)])
    monkeypatch.setattr(triton_forward._cond_tuned, "cache", {})
    return name


@pytest.fixture(params=sorted(PINNED))
def pinned(request, monkeypatch):
    """Each pinned config in turn."""
    return _pin(monkeypatch, request.param)


@pytest.fixture
def pinned_small(monkeypatch):
    """The 64x32 config only (backward and plan tests: their forward is not what they test)."""
    return _pin(monkeypatch, "64x32")


@pytest.mark.parametrize("dtype,heads,kv_heads,head_dim", [
    (torch.float32, 4, 2, 48), (torch.bfloat16, 2, 2, 64), (torch.float16, 4, 1, 80),
    (torch.bfloat16, 2, 2, 128), (torch.float32, 2, 2, 32),
])
def test_triton_forward_edge_cases(pinned, dtype, heads, kv_heads, head_dim):
    q, k, v, cu, pl = _batch(EDGE_LENGTHS, EDGE_PREFIXES, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                             dtype=dtype, seed=head_dim + len(pinned))
    out = grouped_query_attention(q, k, v, cu, pl, backend="triton")
    ref = reference_attention(q, k, v, cu, pl)
    torch.testing.assert_close(out.double(), ref.double(), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("seed", range(2))
def test_triton_forward_long_jagged_bf16(pinned, seed):
    lengths, prefixes = random_lengths(24, max_prefix=1100, max_cond=64, seed=seed)
    q, k, v, cu, pl = _batch(lengths, prefixes, heads=4, kv_heads=2, head_dim=64, dtype=torch.bfloat16, seed=seed)
    out = grouped_query_attention(q, k, v, cu, pl, scale=0.11, backend="triton")
    assert _rel_err(out, reference_attention(q, k, v, cu, pl, scale=0.11)) < 1e-2


def test_triton_poisoned_output_fully_written_and_nan_stays_home(pinned):
    from kernels.triton_grouped import triton_grouped_attention

    q, k, v, cu, pl = _batch(EDGE_LENGTHS, EDGE_PREFIXES, heads=2, head_dim=32)
    out = torch.full_like(q, float("nan"))
    triton_grouped_attention(q, k, v, cu, pl, out=out)
    torch.testing.assert_close(out.double(), reference_attention(q, k, v, cu, pl).double(), atol=2e-5, rtol=2e-5)
    start, end = int(cu[6]), int(cu[7])
    for x in (q, k, v):
        x[start:end] = float("nan")
    finite = torch.isfinite(grouped_query_attention(q, k, v, cu, pl, backend="triton")).all(dim=(1, 2))
    assert finite[:start].all() and finite[end:].all() and not finite[start:end].any()


@pytest.mark.parametrize("conditions", [16, 18, 70])
def test_triton_condition_tiles_and_plan(pinned, conditions):
    """16-, 32- and 64-row condition tiles natively; a plan gives each layer the per-call result."""
    lengths = [300 + conditions, 40 + conditions, conditions, 129 + conditions]
    prefixes = [300, 40, 0, 129]
    q, k, v, cu, pl = _batch(lengths, prefixes, heads=4, kv_heads=2, head_dim=64, dtype=torch.bfloat16,
                             seed=conditions)
    attend = plan_grouped_attention(cu, pl, backend="triton")
    for layer in range(2):
        q_l, k_l = q * (layer + 1), k - layer
        want = grouped_query_attention(q_l, k_l, v, cu, pl, backend="triton")
        assert torch.equal(attend(q_l, k_l, v), want)
        assert _rel_err(want, reference_attention(q_l, k_l, v, cu, pl)) < 1e-2


def test_triton_full_autotune_at_serving_size():
    lengths, prefixes = random_lengths(64, max_prefix=512, max_cond=16, seed=7)
    q, k, v, cu, pl = _batch(lengths, prefixes, heads=8, head_dim=64, dtype=torch.bfloat16, seed=7)
    out = grouped_query_attention(q, k, v, cu, pl)  # auto: triton for CUDA tensors
    assert _rel_err(out, reference_attention(q, k, v, cu, pl)) < 1e-2


@pytest.mark.parametrize("dtype,heads,kv_heads,head_dim,tol", [
    (torch.float32, 4, 2, 48, 1e-4), (torch.bfloat16, 2, 2, 64, 2e-2), (torch.float16, 4, 1, 64, 1e-2),
])
def test_triton_backward(pinned_small, dtype, heads, kv_heads, head_dim, tol):
    lengths = [3, 170, 0, 1, 300, 64]
    q, k, v, cu, pl = _batch(lengths, lengths, heads=heads, kv_heads=kv_heads, head_dim=head_dim, dtype=dtype,
                             requires_grad=True)
    grad_out = torch.randn_like(q)
    got = torch.autograd.grad(grouped_query_attention(q, k, v, cu, pl, backend="triton"), (q, k, v), grad_out)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    want = torch.autograd.grad(reference_attention(q64, k64, v64, cu, pl), (q64, k64, v64), grad_out.double())
    for name, g, w in zip("qkv", got, want):
        assert g.dtype == dtype and _rel_err(g, w) < tol, (name, _rel_err(g, w))


@pytest.mark.parametrize("backend", ["torch", "sdpa_mask"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_backends_on_cuda(backend, dtype):
    q, k, v, cu, pl = _batch(EDGE_LENGTHS, EDGE_PREFIXES, heads=4, kv_heads=2, head_dim=64, dtype=dtype)
    out = grouped_query_attention(q, k, v, cu, pl, backend=backend)
    torch.testing.assert_close(out.double(), reference_attention(q, k, v, cu, pl).double(),
                               atol=TOL[dtype] * 5, rtol=TOL[dtype] * 5)  # SDPA's fp32 may use TF32


@pytest.mark.parametrize("backend", ["varlen", "triton", "sdpa_mask", "torch"])
def test_causal_plan_forward_and_backward_bf16(pinned_small, backend):
    dev = _cuda()
    if backend == "varlen" and not available(dev):
        pytest.skip("this torch build has no torch.nn.attention.varlen")
    lengths = [400, 17, 1, 256, 399, 90]
    q, k, v, cu, pl = _batch(lengths, lengths, heads=4, kv_heads=2, head_dim=32, dtype=torch.bfloat16,
                             requires_grad=True)
    rows = torch.tensor([0, 1, 1, 2, 3, 4], device=dev)
    out = plan_causal_attention(cu, backend=backend, row_of_seq=rows, row_tokens=400)(q, k, v)
    grad_out = torch.randn_like(q)
    got = torch.autograd.grad(out, (q, k, v), grad_out)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = reference_attention(q64, k64, v64, cu, pl)
    want = torch.autograd.grad(ref, (q64, k64, v64), grad_out.double())
    assert _rel_err(out, ref) < 1e-2
    for name, g, w in zip("qkv", got, want):
        assert _rel_err(g, w) < 2e-2, (name, _rel_err(g, w))


def test_auto_choices_on_cuda(monkeypatch):
    dev = _cuda()
    monkeypatch.delenv("LUM_ATTENTION_BACKEND", raising=False)
    assert resolve_backend("auto", dev, needs_grad=False, causal_only=False) == "triton"
    assert resolve_causal_backend("auto", dev) == ("varlen" if available(dev) else "sdpa_mask")
