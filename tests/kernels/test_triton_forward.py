"""Triton forward (TRITON_INTERPRET=1, set by tests/conftest.py) against the float64 reference."""

from __future__ import annotations

import pytest
import torch
from jagged_batches import jagged_batch, random_lengths

from kernels import grouped_query_attention
from kernels.reference import reference_attention
from kernels.tiles import TILE
from kernels.triton_forward import _configs, prune_configs
from kernels.triton_grouped import triton_grouped_attention

TOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def _check(q, k, v, cu, pl, *, scale=None):
    out = grouped_query_attention(q, k, v, cu, pl, scale=scale, backend="triton")
    ref = reference_attention(q, k, v, cu, pl, scale=scale)
    assert out.dtype == q.dtype and out.shape == q.shape
    tol = TOL[q.dtype]
    torch.testing.assert_close(out.double(), ref.double(), atol=tol, rtol=tol)


def test_edge_cases_gqa_fp32(edge_batch):
    """prefix 0/1, N 0/1, empty sequences, lengths off the block grid, a 200-token sequence, GQA 4:2."""
    _check(*edge_batch(heads=4, kv_heads=2, head_dim=48))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_dtypes(dtype):
    _check(*jagged_batch([70, 17, 3, 0, 33], [64, 16, 0, 0, 1], heads=2, head_dim=64, dtype=dtype))


@pytest.mark.parametrize("head_dim", [32, 48, 64, 80, 128])
def test_head_dims(head_dim):
    _check(*jagged_batch([70, 17, 3], [65, 16, 0], heads=2, head_dim=head_dim))


def test_gqa_single_kv_head_and_custom_scale():
    _check(*jagged_batch([40, 9, 66], [33, 9, 2], heads=4, kv_heads=1, head_dim=32), scale=0.2)


@pytest.mark.parametrize("seed", range(2))
def test_random_jagged(seed):
    lengths, prefixes = random_lengths(8, max_prefix=150, max_cond=9, seed=seed)
    _check(*jagged_batch(lengths, prefixes, heads=2, head_dim=32, seed=seed))


@pytest.mark.parametrize("conditions", [16, 18, 70])
def test_condition_tile_sizes(conditions):
    """16-, 32- and 64-row condition tiles (70 conditions: two tiles, the second mostly empty), jagged."""
    lengths = [40 + conditions, 3 + conditions // 2, 1]
    prefixes = [40, 3, 0]
    _check(*jagged_batch(lengths, prefixes, heads=2, kv_heads=1, head_dim=32))


def test_one_long_sequence_among_short_ones():
    _check(*jagged_batch([3, 300, 1, 2, 5], [1, 290, 1, 0, 5], heads=1, head_dim=32))


def test_nan_poisoned_output_fully_overwritten(edge_batch):
    q, k, v, cu, pl = edge_batch(heads=2, head_dim=32)
    out = torch.full_like(q, float("nan"))
    result = triton_grouped_attention(q, k, v, cu, pl, out=out)
    assert result.data_ptr() == out.data_ptr()
    assert torch.isfinite(out).all()
    expected = reference_attention(q, k, v, cu, pl).double()
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=2e-5)


def test_nan_in_one_sequence_does_not_leak(edge_batch):
    q, k, v, cu, pl = edge_batch(heads=2, head_dim=32)
    start, end = int(cu[6]), int(cu[7])  # the 17-token sequence between two others
    for x in (q, k, v):
        x[start:end] = float("nan")
    out = grouped_query_attention(q, k, v, cu, pl, backend="triton")
    inside = torch.zeros(out.shape[0], dtype=torch.bool)
    inside[start:end] = True
    assert torch.isfinite(out[~inside]).all()
    assert torch.isnan(out[inside]).all()


def test_prune_keeps_valid_configs():
    kept = prune_configs(_configs(), {"SEQLEN_BUCKET": 64, "PREFIX_BUCKET": 32, "BLOCK_D": 128})
    assert kept and all(c.kwargs["BLOCK_M"] == 64 and c.kwargs["BLOCK_N"] == 32 for c in kept)
    big = prune_configs(_configs(), {"SEQLEN_BUCKET": 1024, "PREFIX_BUCKET": 512, "BLOCK_D": 64})
    assert {c.kwargs["BLOCK_M"] for c in big} == {64, 128}
    assert all(c.kwargs["BLOCK_M"] % c.kwargs["BLOCK_N"] == 0 for c in big)


def test_invisible_keys_are_never_loaded():
    """NaN in k/v of a late history token and of one condition token: rows whose tiles cannot see them
    stay finite (the explicit-mask reference would turn every row of the sequence NaN through 0 * NaN),
    so those key blocks were never loaded and condition tokens never read each other."""
    q, k, v, cu, pl = jagged_batch([210], [200], heads=2, head_dim=32)
    for x in (k, v):
        x[190] = float("nan")  # history token 190: first visible to rows in the 128..199 sub-tiles
        x[205] = float("nan")  # condition token 205: visible to itself only
    out = grouped_query_attention(q, k, v, cu, pl, backend="triton")
    finite = torch.isfinite(out).all(dim=(1, 2))
    assert finite[:128].all()  # rows 0..127: key blocks [0, 128) only
    assert not finite[190:200].any() and not finite[205]  # they do see a NaN key
    assert not finite[200:210].any()  # conditions see the history, which holds NaN at 190
    clean_k, clean_v = k.clone(), v.clone()
    clean_k[190:], clean_v[190:] = 0.0, 0.0
    expected = reference_attention(q, clean_k, clean_v, cu, pl)
    torch.testing.assert_close(out[:128].double(), expected[:128].double(), atol=2e-5, rtol=2e-5)


def test_condition_tokens_never_read_each_other():
    """A NaN condition token poisons only itself: the other condition tiles never load its k/v."""
    q, k, v, cu, pl = jagged_batch([80, 75], [66, 70], heads=2, head_dim=32)
    for x in (k, v):
        x[70] = float("nan")  # a condition token of sequence 0
    out = grouped_query_attention(q, k, v, cu, pl, backend="triton")
    finite = torch.isfinite(out).all(dim=(1, 2))
    assert not finite[70] and finite[:70].all() and finite[71:].all()


def test_prune_through_the_autotuner():
    """The Autotuner hands prune_configs positional args (SEQLEN_BUCKET ...) and constexpr kwargs."""
    from kernels.triton_forward import _fwd_tuned

    args = [None] * 8 + [0] * 9 + [1.0, 64, 16]  # pointers, strides, qk_scale, SEQLEN_BUCKET, PREFIX_BUCKET
    _fwd_tuned.nargs = dict(zip(_fwd_tuned.arg_names, args))
    try:
        kept = _fwd_tuned.prune_configs({"HEAD_DIM": 64, "BLOCK_D": 64, "GROUP": 1, "TILE_ROWS": TILE})
    finally:
        _fwd_tuned.nargs = None
    assert kept and {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in kept} == {(64, 32)}


def test_condition_prune_through_the_autotuner():
    """The condition launch's autotuner: BLOCK_M comes from the launch, BLOCK_N is pruned by the prefix."""
    from kernels.triton_forward import _cond_tuned

    args = [None] * 8 + [0] * 9 + [1.0, 64, 32]  # pointers, strides, qk_scale, SEQLEN_BUCKET, PREFIX_BUCKET
    _cond_tuned.nargs = dict(zip(_cond_tuned.arg_names, args))
    try:
        kept = _cond_tuned.prune_configs({"HEAD_DIM": 64, "BLOCK_D": 64, "GROUP": 1, "TILE_ROWS": 16,
                                          "BLOCK_M": 16, "QUERY": True})
    finally:
        _cond_tuned.nargs = None
    assert kept and {c.kwargs["BLOCK_N"] for c in kept} == {32}
    assert all("BLOCK_M" not in c.kwargs for c in _cond_tuned.configs)  # never conflicts with the launch's
