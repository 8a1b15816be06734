"""The local DDP launcher: rank 0's result comes back; a failing rank stops the others and is named."""

from __future__ import annotations

import time

import pytest

from stages.training.workers import run_workers
from tests.stages.ddp_worker import fail_on_rank_1, report_rank


@pytest.mark.slow
def test_ranks_form_one_group_and_rank_0_answers():
    out = run_workers(report_rank, {"tag": "t"}, world=2, name="test")
    assert out == {"tag": "t", "rank": 0, "world": 2, "env_world": "2", "sum": 3.0}


@pytest.mark.slow
def test_a_failing_rank_stops_the_others_with_one_error():
    started = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"^test worker rank 1 of 2 failed: ValueError: broken on purpose$"):
        run_workers(fail_on_rank_1, {"why": "broken on purpose"}, world=2, name="test")
    assert time.perf_counter() - started < 120  # rank 0 sleeps 600 s unless stopped


def test_one_worker_is_refused():
    with pytest.raises(ValueError, match="world >= 2"):
        run_workers(report_rank, {"tag": "t"}, world=1, name="test")
