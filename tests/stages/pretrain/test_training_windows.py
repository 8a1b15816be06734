"""training_windows: each user's history cut into max_len windows, newest first."""

from __future__ import annotations

import numpy as np
import pytest

from stages.pretrain.data import training_windows


def _hist(n: int, base: int = 0):
    it = np.arange(base + 1, base + n + 1)
    return it, it + 1000


def test_one_window_is_the_last_max_len():
    items, conds = zip(_hist(7), _hist(3, 100))
    wi, wc = training_windows(list(items), list(conds), max_len=4, windows=1)
    assert [w.tolist() for w in wi] == [[4, 5, 6, 7], [101, 102, 103]]
    assert [w.tolist() for w in wc] == [[1004, 1005, 1006, 1007], [1101, 1102, 1103]]


def test_all_windows_cover_the_history_and_drop_single_behaviour_tails():
    items, conds = zip(_hist(9), _hist(10, 100), _hist(1, 200), _hist(0, 300))
    wi, wc = training_windows(list(items), list(conds), max_len=4, windows=0)
    got = [w.tolist() for w in wi]
    # user 0: 9 = 4 + 4 + 1 -> the 1-behaviour oldest tail is dropped; user 1: 10 = 4 + 4 + 2;
    # user 2: its only window is kept even with one behaviour; user 3 (empty) has none
    assert got == [[6, 7, 8, 9], [2, 3, 4, 5], [107, 108, 109, 110], [103, 104, 105, 106], [101, 102], [201]]
    assert all((c - i == 1000).all() for i, c in zip(wi, wc))
    # every behaviour but the dropped tail is in exactly one window
    assert sorted(x for w in got for x in w) == sorted([*range(2, 10), *range(101, 111), 201])


def test_window_count_caps_and_bad_arguments():
    items, conds = zip(_hist(12))
    wi, _ = training_windows(list(items), list(conds), max_len=5, windows=2)
    assert [w.tolist() for w in wi] == [[8, 9, 10, 11, 12], [3, 4, 5, 6, 7]]
    with pytest.raises(ValueError, match="windows -1"):
        training_windows(list(items), list(conds), max_len=5, windows=-1)
    with pytest.raises(ValueError, match="max_len 0"):
        training_windows(list(items), list(conds), max_len=0, windows=1)
