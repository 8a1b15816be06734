"""Triton forward (TRITON_INTERPRET=1, set by tests/conftest.py) against the float64 reference."""

from __future__ import annotations

import pytest
import torch
from jagged_batches import jagged_batch, random_lengths

from kernels import grouped_query_attention
from kernels.reference import reference_attention
from kernels.triton_grouped import TILE, _configs, build_tiles, prune_configs, triton_grouped_attention

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


def test_one_long_sequence_among_short_ones():
    _check(*jagged_batch([3, 300, 1, 2, 5], [1, 290, 1, 0, 5], heads=1, head_dim=32))


def test_nan_poisoned_output_fully_overwritten(edge_batch):
    q, k, v, cu, pl = edge_batch(heads=2, head_dim=32)
    out = torch.full_like(q, float("nan"))
    result = triton_grouped_attention(q, k, v, cu, pl, out=out)
    assert result.data_ptr() == out.data_ptr()
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), reference_attention(q, k, v, cu, pl).double(), atol=2e-5, rtol=2e-5)


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


def test_tile_table_covers_every_row_once():
    offsets = [0, 0, 1, 131, 400, 403]
    prefixes = [0, 1, 129, 10, 0]
    tiles = build_tiles(offsets, prefixes)
    covered = torch.zeros(offsets[-1], dtype=torch.int64)
    for seq, start, is_cond in tiles.tolist():
        end = offsets[seq + 1] - offsets[seq] if is_cond else prefixes[seq]
        assert (start >= prefixes[seq]) == bool(is_cond)
        lo, hi = offsets[seq] + start, offsets[seq] + min(start + TILE, end)
        covered[lo:hi] += 1
    assert torch.equal(covered, torch.ones_like(covered))


def test_prune_keeps_valid_configs():
    kept = prune_configs(_configs(), {"SEQLEN_BUCKET": 64, "PREFIX_BUCKET": 32, "BLOCK_D": 128})
    assert kept and all(c.kwargs["BLOCK_M"] == 64 and c.kwargs["BLOCK_N"] == 32 for c in kept)
    big = prune_configs(_configs(), {"SEQLEN_BUCKET": 1024, "PREFIX_BUCKET": 512, "BLOCK_D": 64})
    assert {c.kwargs["BLOCK_M"] for c in big} == {64, 128}
    assert all(c.kwargs["BLOCK_M"] % c.kwargs["BLOCK_N"] == 0 for c in big)
