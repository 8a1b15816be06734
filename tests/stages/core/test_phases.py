"""Phase markers: logged only with LUM_PHASE_LOG=1, parsed back from any log prefix; LUM_CHAOS_KILL kills the
process group at the chosen begin."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from stages.core import phases

REPO = Path(__file__).resolve().parents[3]
SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(name)s: %(message)s")
from stages.core.phases import phase
for i in range(3):
    with phase("checkpoint", f"step {i}"):
        print("work", i, flush=True)
print("finished", flush=True)
"""


def _run(env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in (phases.ENV, phases.KILL_ENV)}
    env.update({"PYTHONPATH": str(REPO), **env_extra})
    return subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60,
                          start_new_session=True)


def test_markers_only_when_asked_and_parsed_back():
    quiet = _run({})
    assert quiet.returncode == 0 and phases.MARKER not in quiet.stdout
    loud = _run({phases.ENV: "1"})
    marks = [phases.parse(line) for line in loud.stdout.splitlines() if phases.parse(line)]
    assert marks[:2] == [("begin", "checkpoint", "step 0"), ("end", "checkpoint", "step 0")] and len(marks) == 6
    assert phases.parse("12:00:00 INFO other: hello") is None


def test_chaos_kill_hits_the_chosen_begin():
    out = _run({phases.ENV: "1", phases.KILL_ENV: "checkpoint:2:0"})
    assert out.returncode == -signal.SIGKILL
    assert "work 0" in out.stdout and "work 1" not in out.stdout  # killed at the second begin, before its work
    assert out.stdout.splitlines()[-1].endswith("lum-phase begin checkpoint step 1")


def test_unknown_phase_is_refused():
    with pytest.raises(ValueError, match="unknown phase 'commit'"), phases.phase("commit"):
        pass
