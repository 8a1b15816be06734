"""Concurrent runs of one stage and day: the second fails with one line naming the first (the lease), the tables
end as one clean run leaves them, and a backfill skips a stage another run completed after it planned the day.
The slow ones race real processes (pretrain + infer on synthetic sequences: no Spark, seconds each)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stages.bench.chaos_compare import compare
from stages.core import phases
from stages.pipeline import backfill, daily
from tests.stages.pretrain_fixtures import make_warehouse

REPO = Path(__file__).resolve().parents[3]
TINY = str(REPO / "tests" / "dags" / "tiny.toml")
LEASE_ERROR = re.compile(r"^lum: error: stage (\w+) for ds (\S+) is being run by pid (\d+) on host (\S+) since (\S+); "
                         r"lease \S+$")
DAILY_TASK = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from stages.pipeline.daily import run_stage
print(run_stage(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]))
"""

# Rows and keys must match exactly; floats within the chaos bench's tolerance: a second process's CPU reductions
# may round the last float32 bits differently (seen: 2.5e-8 in one embedding under heavy machine load).
ATOL = 1e-6


def _env(stop_at: str | None = None) -> dict[str, str]:
    """The children's environment; ``stop_at="phase:k"``: the child SIGSTOPs itself at that phase's k-th begin."""
    env = {k: v for k, v in os.environ.items() if k not in (phases.KILL_ENV, phases.SIGNAL_ENV)}
    env.update({"PYTHONPATH": str(REPO), phases.ENV: "1"})
    if stop_at:
        env.update({phases.KILL_ENV: f"{stop_at}:0", phases.SIGNAL_ENV: "STOP"})
    return env


def _start(args: list[str], log: Path, stop_at: str | None = None) -> subprocess.Popen:
    with open(log, "w") as handle:  # a file, not a pipe: a stopped or chatty child never blocks on it
        return subprocess.Popen([sys.executable, *args], env=_env(stop_at), stdout=handle, stderr=handle, text=True)


def _stopped_or_gone(proc: subprocess.Popen, timeout_s: float = 300.0) -> bool:
    """Wait until ``proc`` is stopped (True) or has exited (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if Path(f"/proc/{proc.pid}/stat").read_text().rpartition(")")[2].split()[0] == "T":
            return True
        time.sleep(0.05)
    raise TimeoutError(f"pid {proc.pid} neither stopped nor exited in {timeout_s} s")


def _last_line(log: Path) -> str:
    lines = log.read_text().strip().splitlines()
    return lines[-1] if lines else ""


def test_backfill_skips_a_stage_another_run_completed_after_the_plan(monkeypatch, warehouse):
    calls, checks = [], {"pretrain": 0}

    def complete(stage):
        def check(wh, ds):
            if stage != "pretrain":
                return False
            checks["pretrain"] += 1
            return checks["pretrain"] > 1  # incomplete when the day is planned, complete when its turn comes

        return check

    monkeypatch.setattr(backfill, "COMPLETE", {s: complete(s) for s in daily.STAGES})
    monkeypatch.setattr(daily, "RUNNERS", {s: (lambda ds, wh, c=None, o=None, s=s: calls.append(s) or {"seconds": 0})
                                           for s in daily.STAGES})
    out = backfill.run_backfill(start="2000-01-01", end="2000-01-01", stages=["pretrain", "infer"], warehouse=warehouse)
    assert calls == ["infer"] and out["runs"][0]["seconds"] == {"infer": 0}


@pytest.mark.slow
def test_manual_run_beside_the_daily_task_fails_with_one_line(tmp_path):
    """The daily task body (what the Airflow task runs) stops itself inside pretrain(D), holding its lease; a
    manual `lum run pretrain` of the same day must fail at once naming it; the task then finishes alone."""
    wh, ref = str(tmp_path / "wh"), str(tmp_path / "ref")
    ds = make_warehouse(wh, days=1)[0]
    make_warehouse(ref, days=1)
    daily.run_stage("pretrain", ds, ref, TINY)
    task = _start(["-c", DAILY_TASK, "pretrain", ds, wh, TINY], tmp_path / "task.log", stop_at="stage:1")
    try:
        assert _stopped_or_gone(task), _last_line(tmp_path / "task.log")
        manual = _start(["-m", "stages", "run", "pretrain", "--ds", ds, "--warehouse", wh, "--config", TINY],
                        tmp_path / "manual.log")
        assert manual.wait(timeout=300) == 2, (tmp_path / "manual.log").read_text()[-2000:]
        match = LEASE_ERROR.match(_last_line(tmp_path / "manual.log"))
        assert match, _last_line(tmp_path / "manual.log")
        assert match.groups()[:4] == ("pretrain", ds, str(task.pid), socket.gethostname())
    finally:
        os.kill(task.pid, signal.SIGCONT)
    assert task.wait(timeout=300) == 0, (tmp_path / "task.log").read_text()[-2000:]
    result = compare(ref, wh, atol=ATOL)
    assert result["ok"], result["differs"]
    assert not (Path(wh) / "_leases" / "pretrain" / ds).exists()


@pytest.mark.slow
def test_two_backfills_over_the_same_days_at_once(tmp_path):
    """Day 1 is done; two backfills of days 1-2 start together. Each stops itself as its first Delta commit
    begins (day 2's item_knowledge: the snapshot read, the commit not made), and once both are stopped (or
    gone) both go on: without leases both commit that new partition (delta-rs sees no conflict) and it holds
    both runs' rows. Each must commit or fail with the one-line lease error, one must finish, and the tables
    and model versions must equal one clean backfill's."""
    wh, ref = str(tmp_path / "wh"), str(tmp_path / "ref")
    days = make_warehouse(wh, days=2)
    make_warehouse(ref, days=2)
    for target, end in ((wh, days[0]), (ref, days[1])):
        backfill.run_backfill(start=days[0], end=end, stages=["pretrain", "infer"], config_path=TINY, warehouse=target)
    args = ["-m", "stages", "backfill", "--start", days[0], "--end", days[1], "--stages", "pretrain", "infer",
            "--config", TINY, "--warehouse", wh]
    logs = [tmp_path / f"run-{i}.log" for i in range(2)]
    runs = [_start(args, log, stop_at="delta_commit:1") for log in logs]
    try:
        stopped = [_stopped_or_gone(proc) for proc in runs]
    finally:
        for proc in runs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
    results = [(proc.wait(timeout=600), log) for proc, log in zip(runs, logs)]
    result = compare(ref, wh, atol=ATOL)
    assert result["ok"], {k: v["problem"] for k, v in {**result["tables"], **result["models"]}.items() if not v["ok"]}
    assert stopped.count(True) == 1 and sorted(rc for rc, _ in results) == [0, 2], (stopped, results)
    for rc, log in results:
        if rc != 0:
            assert LEASE_ERROR.match(_last_line(log)), log.read_text()[-2000:]
    assert not list((Path(wh) / "_leases").rglob("20*"))  # every lease released
