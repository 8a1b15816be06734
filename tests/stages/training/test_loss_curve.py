"""The training loop's loss curve: block means, at most CURVE_POINTS points, resumable from its state."""

from __future__ import annotations

import pytest

from stages.training.loop import CURVE_POINTS, LossCurve


@pytest.mark.parametrize("total", [1, 7, CURVE_POINTS, CURVE_POINTS + 1, 3 * CURVE_POINTS + 2])
def test_block_means_end_at_the_last_step(total):
    curve = LossCurve(total)
    for step in range(1, total + 1):
        curve.add(step, float(step))
    steps = [s for s, _ in curve.points]
    assert len(steps) <= CURVE_POINTS and steps[-1] == total and steps == sorted(set(steps))
    starts = [0] + steps[:-1]
    for (end, mean), start in zip(curve.points, starts):
        assert mean == pytest.approx(sum(range(start + 1, end + 1)) / (end - start))


def test_state_round_trip_continues_a_block():
    whole, first = LossCurve(200), LossCurve(200)
    for step in range(1, 201):
        whole.add(step, step * 0.5)
        if step <= 7:
            first.add(step, step * 0.5)
    resumed = LossCurve(200)
    resumed.load(first.state())
    for step in range(8, 201):
        resumed.add(step, step * 0.5)
    assert resumed.points == whole.points
    empty = LossCurve(5)
    empty.load(None)  # a checkpoint written before curves were kept
    assert empty.points == []
