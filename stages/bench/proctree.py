"""Run one command as a child process and sample the resident memory of its whole process tree.

``run_sampled(argv, ...)`` starts ``argv``, and every ``interval`` seconds until it exits reads the RSS of the
child and of all its descendants (``psutil.Process.children(recursive=True)``). Each process is classed as
``driver`` (the child itself: the Python of the stage), ``jvm`` (a ``java`` process: Spark's JVM) or ``workers``
(any other Python process: Spark's python workers, torch DDP ranks); anything else (the shell scripts that
launch the JVM) is ``other``. Per class the peak is the largest SUM over that class's processes at one sample,
so N concurrent workers count N times (RSS includes pages a forked worker shares with its parent, so the
workers' sum is an upper bound). A process that lives shorter than one interval can be missed.

With ``disk_path`` it also samples the used bytes of that path's file system (``shutil.disk_usage``): the peak
above the used bytes at the start is the most disk the run held at once, temporary files (a sort's spill,
Spark's shuffle files on that file system) included. Other writers on the same file system count too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import psutil

CLASSES = ("driver", "workers", "jvm", "other")
MB = 1024 * 1024


@dataclass
class Sampled:
    """What one sampled run did: exit code, wall seconds, peak RSS (MiB), most processes per class, and the peak
    disk (MiB) it added to ``disk_path``'s file system (None when not sampled)."""

    returncode: int
    seconds: float
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    processes: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    peak_disk_mb: float | None = None


def classify(proc: psutil.Process, root_pid: int) -> str:
    """``driver`` / ``jvm`` / ``workers`` / ``other`` for one process of the tree."""
    if proc.pid == root_pid:
        return "driver"
    name = proc.name().lower()
    if name.startswith("java"):
        return "jvm"
    if name.startswith("python"):
        return "workers"
    argv0 = os.path.basename((proc.cmdline() or [""])[0]).lower()
    if argv0.startswith("java"):
        return "jvm"
    return "workers" if argv0.startswith("python") else "other"


def sample_tree(root: psutil.Process) -> tuple[dict[str, int], dict[str, int]]:
    """(RSS bytes summed per class, processes per class) of ``root`` and its descendants, now."""
    rss = dict.fromkeys(CLASSES, 0)
    count = dict.fromkeys(CLASSES, 0)
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return rss, count
    kinds: dict[int, str] = {}
    for proc in procs:  # parents come before their children
        try:
            kind = kinds[proc.pid] = classify(proc, root.pid)
            if kind == "jvm" and kinds.get(proc.ppid()) == "jvm":
                continue  # the JVM forking a command (Hadoop's shell calls): its pages are the parent's, counted there
            rss[kind] += proc.memory_info().rss
        except psutil.Error:  # exited between the listing and the read
            continue
        count[kind] += 1
    return rss, count


def kill_tree(root: psutil.Process) -> None:
    """Kill ``root`` and its descendants (the processes one ``run_sampled`` call started)."""
    try:
        procs = [*root.children(recursive=True), root]
    except psutil.Error:
        procs = [root]
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(procs, timeout=5)


def run_sampled(argv: Sequence[str], *, stdout: str, stderr: str, env: dict[str, str] | None = None,
                interval: float = 0.2, cwd: str | None = None, disk_path: str | None = None) -> Sampled:
    """Run ``argv`` (stdout / stderr to those files) and sample its tree (and ``disk_path``'s file system) until
    it exits."""
    if interval <= 0:
        raise ValueError(f"interval must be > 0 seconds, got {interval}")
    peak = dict.fromkeys(CLASSES, 0)
    most = dict.fromkeys(CLASSES, 0)
    samples = 0
    disk_start = disk_peak = shutil.disk_usage(disk_path).used if disk_path is not None else 0
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        started = time.perf_counter()
        child = subprocess.Popen(list(argv), stdout=out, stderr=err, env=env, cwd=cwd)
        root = psutil.Process(child.pid)
        try:
            while child.poll() is None:
                rss, count = sample_tree(root)
                samples += 1
                for kind in CLASSES:
                    peak[kind] = max(peak[kind], rss[kind])
                    most[kind] = max(most[kind], count[kind])
                if disk_path is not None:
                    disk_peak = max(disk_peak, shutil.disk_usage(disk_path).used)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=interval)
        except BaseException:  # interrupted: end the tree this call started, then re-raise
            kill_tree(root)
            raise
        seconds = time.perf_counter() - started
    if disk_path is not None:  # what is left at the end counts too (a run shorter than one interval)
        disk_peak = max(disk_peak, shutil.disk_usage(disk_path).used)
    return Sampled(returncode=child.returncode, seconds=seconds,
                   peak_rss_mb={k: round(v / MB, 1) for k, v in peak.items()}, processes=most, samples=samples,
                   peak_disk_mb=round((disk_peak - disk_start) / MB, 1) if disk_path is not None else None)
