"""File choice of point reads: the log's user_id ranges of one partition pick the files; no statistics, all."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from stages.warehouse.scan import _candidate_files


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
