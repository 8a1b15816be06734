"""The host-side tile table (kernels.tiles): coverage and order, and that it needs no triton."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from kernels.tiles import TILE, build_tiles, condition_rows, prev_pow2

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _covered(offsets, prefixes, tiles):
    covered = torch.zeros(offsets[-1], dtype=torch.int64)
    for table, rows in ((tiles.history, TILE), (tiles.conditions, tiles.cond_rows)):
        for seq, start, is_cond in table.tolist():
            end = offsets[seq + 1] - offsets[seq] if is_cond else prefixes[seq]
            assert (start >= prefixes[seq]) == bool(is_cond) and start < end
            lo, hi = offsets[seq] + start, offsets[seq] + min(start + rows, end)
            covered[lo:hi] += 1
    return covered


def test_tile_table_covers_every_row_once():
    offsets = [0, 0, 1, 131, 400, 403]
    prefixes = [0, 1, 129, 10, 0]
    tiles = build_tiles(offsets, prefixes)
    assert tiles.cond_rows == 64  # the longest condition run is 259 rows: 64-row tiles, five of them
    assert (tiles.history[:, 2] == 0).all() and (tiles.conditions[:, 2] == 1).all()
    covered = _covered(offsets, prefixes, tiles)
    assert torch.equal(covered, torch.ones_like(covered))


def test_condition_tiles_fit_the_conditions():
    """16 conditions a user fill one 16-row tile each; 18 take one 32-row tile; never below 16 rows."""
    for n, rows in ((1, 16), (16, 16), (17, 32), (18, 32), (33, 64), (64, 64), (100, 64)):
        assert condition_rows(n) == rows
    offsets = [0, 30, 46, 46 + 16]  # prefixes 14, 0, 10: 16 conditions each
    tiles = build_tiles(offsets, [14, 0, 0])
    assert tiles.cond_rows == 16 and tiles.conditions.shape[0] == 3
    assert tiles.conditions[:, 1].tolist() == [14, 0, 0]  # the longest history's conditions first
    covered = _covered(offsets, [14, 0, 0], tiles)
    assert torch.equal(covered, torch.ones_like(covered))
    assert build_tiles([0, 5], [5]).conditions.shape == (0, 3)  # plain causal: no condition tile


def test_tiles_sorted_by_cost_longest_history_first():
    offsets, prefixes = [0, 10, 400], [5, 300]
    tiles = build_tiles(offsets, prefixes)
    assert tiles.history.tolist()[0] == [1, 256, 0]  # the last history tile of the long sequence visits the most keys
    assert prev_pow2(0) == 1 and prev_pow2(300) == 256 and prev_pow2(512) == 512


def test_torch_paths_never_import_triton():
    code = ("import sys, torch\n"
            "from kernels import grouped_query_attention, plan_causal_attention\n"
            "from kernels.tiles import build_tiles\n"
            "q = torch.randn(6, 2, 16); cu = torch.tensor([0, 4, 6], dtype=torch.int32)\n"
            "grouped_query_attention(q, q, q, cu, torch.tensor([3, 2], dtype=torch.int32), backend='torch')\n"
            "plan_causal_attention(cu, backend='sdpa_mask')(q, q, q)\n"
            "build_tiles([0, 4, 6], [3, 2])\n"
            "assert 'triton' not in sys.modules, 'triton was imported'\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = REPO
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
