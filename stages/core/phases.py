"""Phase markers: one log line when a crash-relevant step begins and one when it ends.

    with phase("delta_commit", "user_knowledge ds=2000-12-01"):
        ...   # logs "lum-phase begin delta_commit user_knowledge ds=2000-12-01", then "lum-phase end ..."

Phases: ``stage`` (a daily stage for a day), ``spark_write``, ``staging``, ``delta_commit``, ``checkpoint``,
``model_publish``, ``infer_publish``, ``cluster_sort`` (maintain's sort of a day, up to its commit). ``lum bench chaos`` reads them from a child's log to kill it inside a
chosen phase and to name the phase a kill hit. They are DEBUG lines of the ``lum.phase`` logger, shown only
when ``LUM_PHASE_LOG=1`` is set (the logger is then at DEBUG whatever the root level), so normal logs stay
quiet. An ``end`` line is written only when the block exits normally: an open phase at a crash is one that
did not finish.

Fault injection (``lum bench chaos`` only): ``LUM_CHAOS_KILL=phase:occurrence:delay_s`` makes the process
SIGKILL its own process group ``delay_s`` after the ``occurrence``-th begin of ``phase`` (0: at once, before
the phase's work), so a kill lands inside a phase of a few milliseconds, which a watcher reading the log
could not time. With ``LUM_CHAOS_SIGNAL=STOP`` the process instead SIGSTOPs itself there (tests freeze one run
inside a phase while another runs). Unset, it costs one dictionary lookup per phase.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

MARKER = "lum-phase"
ENV = "LUM_PHASE_LOG"
KILL_ENV = "LUM_CHAOS_KILL"
SIGNAL_ENV = "LUM_CHAOS_SIGNAL"  # "KILL" (default) or "STOP"
PHASES = ("stage", "spark_write", "staging", "delta_commit", "checkpoint", "model_publish", "infer_publish",
          "cluster_sort")
LINE_RE = re.compile(rf"{MARKER} (begin|end) (\w+)(?: (.*))?$")

log = logging.getLogger("lum.phase")
if os.environ.get(ENV) == "1":
    log.setLevel(logging.DEBUG)


@contextmanager
def phase(name: str, detail: str = "") -> Iterator[None]:
    """Mark the block as phase ``name`` (one of ``PHASES``); ``detail`` names the table, day or version."""
    if name not in PHASES:
        raise ValueError(f"unknown phase {name!r}; known: {', '.join(PHASES)}")
    log.debug("%s begin %s %s", MARKER, name, detail)
    if os.environ.get(KILL_ENV):
        _maybe_kill(name)
    yield
    log.debug("%s end %s %s", MARKER, name, detail)


_begun: Counter[str] = Counter()


def _maybe_kill(name: str) -> None:
    """SIGKILL this process group (SIGSTOP this process) now or after the delay when ``LUM_CHAOS_KILL`` names
    this begin."""
    target, _, rest = os.environ[KILL_ENV].partition(":")
    occurrence, _, delay = rest.partition(":")
    if target != name:
        return
    _begun[name] += 1
    if _begun[name] != int(occurrence or 1):
        return
    stop = os.environ.get(SIGNAL_ENV, "KILL") == "STOP"
    act, args = (os.kill, (os.getpid(), signal.SIGSTOP)) if stop else (os.killpg, (0, signal.SIGKILL))
    if float(delay or 0) <= 0:
        act(*args)
        return
    timer = threading.Timer(float(delay), act, args)
    timer.daemon = True
    timer.start()


def parse(line: str) -> tuple[str, str, str] | None:
    """``(begin|end, phase, detail)`` of a marker line (any log prefix), None for other lines."""
    match = LINE_RE.search(line.rstrip("\n"))
    return (match.group(1), match.group(2), (match.group(3) or "").strip()) if match else None
