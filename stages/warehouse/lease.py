"""Leases: at most one run of a stage for a day at a time, on a local warehouse.

    with hold(warehouse, "pretrain", ["2000-12-01"]):   # LeaseHeld (a one-line ValueError) when taken
        ...

A lease is the file ``<warehouse>/_leases/<stage>/<ds>``, created with ``O_CREAT | O_EXCL`` (atomic on a
local or POSIX file system) and holding its owner as JSON: pid, host, start time, a random token, the
process's start tick and boot id (so a reused pid is not mistaken for the owner), and ``job`` (for torchrun,
its run id and rendezvous address: the ranks of one job share the lease; the rank that created it releases it).
It is released (unlinked) in ``finally``. A lease is stale, and is broken by the next run, when its owner
ran on this host (same host name) and is gone (a SIGKILL, an OOM kill), or when its file's mtime, which a
holder's heartbeat thread touches every ``HEARTBEAT_S``, is older than ``LUM_LEASE_STALE_S`` seconds (default
``STALE_S``; owners on other hosts; containers sharing a warehouse need distinct host names). Breaking and
releasing happen under an ``flock`` on ``<stage>/.guard`` and re-read the owner first, so two runs never both
break and take one lease.

Why: two runs of one stage and day share staging and checkpoint directories and model paths, and two
delta-rs overwrites of a partition that did not exist yet both commit (the conflict checker sees no file
either one removed), leaving the rows of both runs. Limits: object-store warehouses (``s3://``...) have no
``O_EXCL`` or ``flock``: ``hold`` logs a warning and runs without a lease, and one run per (stage, day) is
the scheduler's job there (Airflow's one task instance per run). Several days are taken in sorted order, all
or none.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from stages.core.dates import check_ds

log = logging.getLogger(__name__)

STALE_S = 600.0  # a lease whose heartbeat stopped this long ago (an owner on another host) may be broken
HEARTBEAT_S = 30.0  # how often a holder touches its lease files
STALE_ENV = "LUM_LEASE_STALE_S"
JOB_ENV = "TORCHELASTIC_RUN_ID"


class LeaseHeld(ValueError):
    """Another live run holds the lease; the message is one line naming stage, day, pid, host and start."""


def lease_root(warehouse: Any) -> Path | None:
    """``<warehouse>/_leases`` for a local warehouse (a path or ``file://``), None for other URIs."""
    uri = str(getattr(warehouse, "uri", warehouse)).removeprefix("file://")
    return None if "://" in uri else Path(uri) / "_leases"


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of ``/proc/<pid>/stat`` (state, ppid, ...), None when unknown (no process, no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()  # the command name (field 2) may contain spaces and parentheses


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22), None when unknown."""
    fields = _proc_stat(pid)
    return fields[19] if fields else None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _alive(owner: dict) -> bool:
    """Whether the owner process (on this host) still runs: same pid, start tick and boot."""
    if owner.get("boot_id") and _boot_id() and owner["boot_id"] != _boot_id():
        return False
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process exists
    fields = _proc_stat(int(owner["pid"]))
    if fields and fields[0] in ("Z", "X"):
        return False  # killed, not yet reaped by its parent
    start = fields[19] if fields else None
    return owner.get("pid_start") is None or start is None or start == owner["pid_start"]


def _stale_after() -> float:
    value = os.environ.get(STALE_ENV)
    try:
        return float(value) if value else STALE_S
    except ValueError:
        raise ValueError(f"{STALE_ENV} must be a number of seconds, got {value!r}") from None


def _read(path: Path) -> dict | None:
    """The owner JSON; None when the file is gone; {} while its creator is still writing it."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {}


def is_stale(path: Path, owner: dict) -> bool:
    """A lease whose owner died on this host, or whose heartbeat (file mtime) stopped ``LUM_LEASE_STALE_S`` ago."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True
    if owner and owner.get("host") == socket.gethostname() and "pid" in owner:
        return not _alive(owner)
    return age > _stale_after()


def describe(stage: str, ds: str, owner: dict, path: Path) -> str:
    if not owner:
        return f"stage {stage} for ds {ds} is being taken by another run (lease {path} is being written)"
    job = f" (job {owner['job']})" if owner.get("job") else ""
    return (f"stage {stage} for ds {ds} is being run by pid {owner.get('pid')} on host {owner.get('host')} "
            f"since {owner.get('since')}{job}; lease {path}")


@contextmanager
def _guarded(path: Path) -> Iterator[None]:
    """The stage directory's ``flock``: unlinking a lease (breaking or releasing it) happens under it, after
    re-reading the owner, so nobody unlinks a lease another run has just taken."""
    with open(path.parent / ".guard", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _break_if_stale(path: Path, stage: str, ds: str) -> bool:
    """Re-read the owner under the guard and unlink the lease when it is stale. True when it is gone."""
    with _guarded(path):
        owner = _read(path)
        if owner is None:
            return True  # released meanwhile
        if not is_stale(path, owner):
            return False
        log.warning("breaking the stale lease of %s for ds %s: %s", stage, ds, describe(stage, ds, owner, path))
        path.unlink(missing_ok=True)
        return True


def acquire(root: Path, stage: str, ds: str, *, job: str | None = None) -> tuple[Path, str | None]:
    """Take the lease of (stage, ds); returns (path, token) where token is None when this process joined a
    lease of its own torchrun job (it must not release it). ``LeaseHeld`` when a live run holds it."""
    check_ds(ds)
    path = root / stage / ds
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        token = uuid.uuid4().hex
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read(path)
            for _ in range(40):  # its creator is writing it: wait for the owner to be readable
                if owner != {}:
                    break
                time.sleep(0.025)
                owner = _read(path)
            if owner and job and owner.get("job") == job:
                return path, None
            if owner is None or _break_if_stale(path, stage, ds):
                continue
            raise LeaseHeld(describe(stage, ds, owner, path)) from None
        now = dt.datetime.now(dt.UTC)
        owner = {"stage": stage, "ds": ds, "pid": os.getpid(), "host": socket.gethostname(),
                 "since": now.isoformat(timespec="seconds"), "token": token, "job": job,
                 "pid_start": _proc_start(os.getpid()), "boot_id": _boot_id()}
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(owner))
        return path, token
    raise LeaseHeld(f"stage {stage} for ds {ds}: lease {path} keeps changing hands; another run is starting")


def release(path: Path, token: str) -> None:
    """Unlink the lease if it is still ours (a lease broken as stale and retaken by another run is left)."""
    with _guarded(path):
        owner = _read(path)
        if owner and owner.get("token") == token:
            path.unlink(missing_ok=True)
            return
    log.warning("lease %s is no longer ours (broken as stale?); leaving it", path)


@contextmanager
def hold(warehouse: Any, stage: str, days: Sequence[str], *, job: str | None = None) -> Iterator[list[Path]]:
    """Hold the leases of ``stage`` for every day of ``days`` (sorted; all or none) for the block.

    ``job``: runs with the same job id share the lease (torchrun ranks). Remote warehouses: no lease (see the
    module docstring). Yields the lease paths ([] without leases)."""
    root = lease_root(warehouse)
    if root is None:
        log.warning("%s: leases need a local warehouse; running %s without one", warehouse, stage)
        yield []
        return
    held: list[tuple[Path, str | None]] = []
    try:
        for ds in sorted(set(days)):
            held.append(acquire(root, stage, ds, job=job))
        with _heartbeat([p for p, token in held if token is not None]):
            yield [p for p, _ in held]
    finally:
        for path, token in reversed(held):
            if token is not None:
                release(path, token)


@contextmanager
def _heartbeat(paths: list[Path]) -> Iterator[None]:
    """Touch ``paths`` every ``HEARTBEAT_S`` in a daemon thread while the block runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            for path in paths:
                with suppress(FileNotFoundError):
                    os.utime(path)

    thread = threading.Thread(target=beat, name="lum-lease-heartbeat", daemon=True)
    if paths:
        thread.start()
    try:
        yield
    finally:
        stop.set()
