"""StreamKeyCheck: the same verdict as one group-by over all keys, holding a bounded number of them when rows
come sorted by the first key column; exact (holding everything) when unsorted, and loud when order breaks late."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from stages.warehouse.keys import StreamKeyCheck, first_bad_key

KEY = ("user_id", "item_id")


def keys(users, items) -> pa.Table:
    return pa.table({"user_id": pa.array(users, pa.int64()), "item_id": pa.array(items, pa.int64())})


def stream(table: pa.Table, batch: int, hold: int) -> tuple[StreamKeyCheck, int]:
    """Feed ``table`` in batches of ``batch`` rows; returns the checker and the most rows it held."""
    check, most = StreamKeyCheck(KEY, hold=hold), 0
    for start in range(0, table.num_rows, batch):
        check.add(table.slice(start, batch))
        most = max(most, check.rows)
    return check, most


@pytest.mark.parametrize("seed", range(6))
def test_a_sorted_stream_gets_the_group_by_verdict_in_bounded_memory(seed):
    rng = np.random.default_rng(seed)
    users = np.sort(rng.integers(0, 400, 3000))
    items = rng.integers(0, 10_000, 3000)  # a repeat within a user is a duplicate key, sometimes none is drawn
    table = keys(users, items)
    check, most = stream(table, batch=37, hold=100)
    found, expected = check.result(), first_bad_key(table, KEY)
    assert (found is None) == (expected is None)
    if expected is not None:
        assert found[0] == "appears 2 times" and found[1]["user_id"] in set(users.tolist())
    assert check.dropped and most <= 100 + 37 + 40  # hold + a batch + one user's run, not 3,000


def test_a_duplicate_far_apart_in_one_long_user_run_is_found():
    users = [1] * 50 + [2] * 500 + [3] * 50  # user 2's run is longer than hold: held whole until it ends
    items = list(range(50)) + list(range(499)) + [7] + list(range(50))
    check, _ = stream(keys(users, items), batch=16, hold=64)
    assert check.result() == ("appears 2 times", {"user_id": 2, "item_id": 7})


def test_unique_sorted_keys_pass_and_nulls_are_named():
    check, _ = stream(keys(np.repeat(np.arange(100), 5), np.tile(np.arange(5), 100)), batch=9, hold=20)
    assert check.result() is None
    nulls = StreamKeyCheck(KEY, hold=4)
    nulls.add(keys([1, 2], [1, 1]))
    nulls.add(keys([None, 3], [5, 6]))
    assert nulls.result() == ("has a null user_id", {"user_id": None, "item_id": 5})


def test_an_unsorted_stream_is_held_whole_and_still_exact():
    check = StreamKeyCheck(KEY, hold=2)
    for users, items in [([6, 5], [1, 1]), ([1, 2], [1, 1]), ([7, 5], [1, 1])]:  # out of order at once
        check.add(keys(users, items))
    assert not check.dropped and check.rows == 6
    assert check.result() == ("appears 2 times", {"user_id": 5, "item_id": 1})


def test_order_broken_after_keys_were_dropped_is_an_error_not_a_miss():
    check = StreamKeyCheck(KEY, hold=2)
    check.add(keys([1, 2, 3], [1, 1, 1]))  # drops users 1 and 2
    assert check.dropped
    with pytest.raises(RuntimeError, match=r"out of order of user_id \(1 after 3\).*it needs them sorted"):
        check.add(keys([1], [1]))  # would repeat the dropped (1, 1) unseen
