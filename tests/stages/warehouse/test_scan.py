"""File choice of point reads: the log's user_id ranges of one partition pick the files (no statistics: all), in
the order of their smallest user; the id set's membership and range tests; id deduplication."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from stages.warehouse.scan import IdSet, _candidate_files, unique_ids


def test_candidate_files_are_the_partition_files_whose_range_can_hold_an_id():
    actions = pa.table({"path": ["a", "b", "c", "d"], "partition.ds": ["D", "D", "D", "E"],
                        "min.user_id": pa.array([1, 10, None, 1], pa.int64()),
                        "max.user_id": pa.array([5, 20, None, 100], pa.int64())})
    assert _candidate_files(actions, "D", np.array([3])) == ["a", "c"]  # c has no statistics: kept
    assert _candidate_files(actions, "D", np.array([6, 9])) == ["c"]  # between the ranges
    assert _candidate_files(actions, "D", np.array([5, 10])) == ["a", "b", "c"]  # bounds are inclusive
    assert _candidate_files(actions, "X", np.array([3])) == []
    no_stats = actions.drop_columns(["min.user_id", "max.user_id"])
    assert _candidate_files(no_stats, "D", np.array([3])) == ["a", "b", "c"]


def test_candidate_files_come_by_their_smallest_user():
    actions = pa.table({"path": ["late", "none", "early"], "partition.ds": ["D", "D", "D"],
                        "min.user_id": pa.array([50, None, 1], pa.int64()),
                        "max.user_id": pa.array([60, None, 9], pa.int64())})
    assert _candidate_files(actions, "D", np.array([5, 55])) == ["early", "late", "none"]


@pytest.mark.parametrize("ids", [np.array([3, 5, 9, 64]),  # a small span: the bitmap
                                 np.array([-7, 3, 2**40, 2**62])])  # sparse: the binary search
def test_id_set_membership_and_ranges(ids):
    id_set = IdSet(ids)
    assert (id_set.bitmap is not None) == (ids[-1] < 1000)
    keys = np.array([3, 4, 5, 9, 64, 65, -7, 2**40, 2**62, -2**63, 2**63 - 1, 0, 2], np.int64)
    assert id_set.member(keys).tolist() == [k in set(ids.tolist()) for k in keys.tolist()]
    lo, hi = np.array([0, 4, 6, 64, 2**41]), np.array([2, 5, 8, 64, 2**62 - 1])
    want = [any(a <= i <= b for i in ids.tolist()) for a, b in zip(lo.tolist(), hi.tolist())]
    assert id_set.overlaps(lo, hi).tolist() == want
    assert not IdSet(np.array([], np.int64)).member(keys).any()


def test_unique_ids_sorts_and_drops_duplicates():
    assert unique_ids([5, 1, 5, -2, 1]).tolist() == [-2, 1, 5]
    assert unique_ids(np.array([1, 2, 3], np.int32)).dtype == np.int64
    assert unique_ids([]).tolist() == []
