"""A ``lum`` child process that ``lum bench chaos`` can kill at a chosen point, leaving nothing running.

``run_child`` starts ``python -m stages <args>`` in its own session (so the Spark JVM, its Python workers and
any DDP workers share its process group), with ``LUM_PHASE_LOG=1`` so it logs phase markers
(``stages.core.phases``), and copies its output to a log file. A ``KillPoint`` in a phase is passed as
``LUM_CHAOS_KILL``: the child SIGKILLs its own process group ``delay_s`` after the ``occurrence``-th begin of
that phase (timed inside the child: phases last milliseconds). ``any`` is timed here: SIGKILL to the group
``delay_s`` after the start. Then whatever of the session is still alive is SIGKILLed and counted
(``survivors``). The phase a kill hit is read from the markers the child wrote before it died: the innermost
phase begun and not ended (``open_phases``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from stages.core import phases

ANY = "any"  # a kill point in time, not in a phase


@dataclass(frozen=True)
class KillPoint:
    phase: str  # a stages.core.phases name, or "any"
    occurrence: int = 1  # the k-th begin marker of that phase (1-based); ignored for "any"
    delay_s: float = 0.0  # seconds after that marker (after the start, for "any")

    @classmethod
    def parse(cls, text: str) -> KillPoint:
        """``"phase[:occurrence[:delay_s]]"``, e.g. ``"delta_commit:2:0.01"``; ValueError naming a bad part."""
        parts = str(text).split(":")
        if not 1 <= len(parts) <= 3 or parts[0] not in (*phases.PHASES, ANY):
            raise ValueError(f"kill point must be phase[:occurrence[:delay_s]] with phase one of "
                             f"{', '.join((*phases.PHASES, ANY))}, got {text!r}")
        try:
            occurrence = int(parts[1]) if len(parts) > 1 else 1
            delay = float(parts[2]) if len(parts) > 2 else 0.0
        except ValueError:
            raise ValueError(f"kill point {text!r}: occurrence must be an int and delay_s a number") from None
        if occurrence < 1 or delay < 0:
            raise ValueError(f"kill point {text!r}: occurrence must be >= 1 and delay_s >= 0")
        return cls(parts[0], occurrence, delay)

    def label(self) -> str:
        return f"{self.phase}:{self.occurrence}:{self.delay_s:.3f}"


@dataclass(frozen=True)
class Marker:
    t: float  # seconds since the child started (when this process read the line)
    kind: str  # "begin" | "end"
    phase: str
    detail: str


@dataclass
class ChildResult:
    rc: int | None  # exit status; -9 when killed
    seconds: float
    markers: list[Marker] = field(default_factory=list)
    killed_at: float | None = None  # seconds since start when SIGKILL was sent; None: not killed
    timed_out: bool = False
    survivors: int = 0  # processes of the child's session still alive after the group kill (then killed)
    tail: str = ""  # last lines of output

    def open_phases(self) -> list[tuple[str, str]]:
        """(phase, detail) begun and not ended, outermost first: at a kill, the phases it interrupted."""
        stack: list[tuple[str, str]] = []
        for m in self.markers:
            if m.kind == "begin":
                stack.append((m.phase, m.detail))
            elif (m.phase, m.detail) in stack:
                del stack[len(stack) - 1 - stack[::-1].index((m.phase, m.detail))]
        return stack

    def occurrences(self, phase: str) -> list[tuple[float, float]]:
        """(begin, end) seconds of each completed occurrence of ``phase``, in order."""
        out, open_at = [], {}
        for m in self.markers:
            if m.phase != phase:
                continue
            if m.kind == "begin":
                open_at[m.detail] = m.t
            elif m.detail in open_at:
                out.append((open_at.pop(m.detail), m.t))
        return sorted(out)


def child_env() -> dict[str, str]:
    """This environment plus phase logging, with this checkout first on PYTHONPATH."""
    env = dict(os.environ)
    root = str(Path(phases.__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    env[phases.ENV] = "1"
    return env


def session_members(sid: int) -> list[int]:
    """Live (not zombie) processes whose session id is ``sid`` (Linux ``/proc``; [] elsewhere)."""
    out = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 3 and int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            out.append(int(entry.name))
    return out


def kill_session(pid: int, settle_s: float = 5.0) -> int:
    """SIGKILL the process group ``pid`` leads, then any process of its session still alive; returns how many
    were still alive after the group kill."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + settle_s
    left = session_members(pid)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = session_members(pid)
    for other in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(other, signal.SIGKILL)
    return len(left)


def run_child(args: list[str], *, log_path: Path, kill: KillPoint | None = None,
              timeout_s: float = 1800.0) -> ChildResult:
    """Run ``python -m stages <args>`` to its end or to the kill point; its output goes to ``log_path``."""
    env = child_env()
    if kill is not None and kill.phase != ANY:
        env[phases.KILL_ENV] = f"{kill.phase}:{kill.occurrence}:{kill.delay_s}"
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "stages", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, env=env, text=True, bufsize=1)
    result = ChildResult(rc=None, seconds=0.0)
    lock = threading.Lock()

    def do_kill(timed_out: bool = False) -> None:
        with lock:
            if result.killed_at is not None:
                return
            result.killed_at = round(time.monotonic() - started, 4)
            result.timed_out = timed_out
        result.survivors = kill_session(proc.pid)

    timers = [threading.Timer(timeout_s, do_kill, kwargs={"timed_out": True})]
    if kill is not None and kill.phase == ANY:
        timers.append(threading.Timer(kill.delay_s, do_kill))
    for timer in timers:
        timer.daemon = True
        timer.start()
    tail: list[str] = []
    with open(log_path, "w") as log:
        for line in proc.stdout:  # type: ignore[union-attr]
            log.write(line)
            tail = (tail + [line])[-40:]
            parsed = phases.parse(line)
            if parsed is not None:
                result.markers.append(Marker(round(time.monotonic() - started, 4), *parsed))
    result.rc = proc.wait()
    for timer in timers:
        timer.cancel()
    result.seconds = round(time.monotonic() - started, 3)
    result.tail = "".join(tail)
    if result.killed_at is None:
        if result.rc == -signal.SIGKILL:  # killed itself at its kill point: it died about now
            result.killed_at = result.seconds
        result.survivors = kill_session(proc.pid, settle_s=1.0)
    return result
