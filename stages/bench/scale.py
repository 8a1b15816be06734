"""``lum bench scale``: wall time, rows and peak memory of every stage at a given number of users.

In a throw-away warehouse (``dir`` to choose it, ``keep`` to keep it) it runs ``lum ingest synthetic``
(``users`` users, its lognormal history lengths, ``days`` days of events) and then every daily stage
(sequences, pretrain, infer, join, maintain) for ``run_days`` consecutive days after the first, each stage as its own
``python -m stages`` process, as the DAG runs them. Pretrain is a small model for ``max_steps`` steps: the point
is the memory and time each stage needs at this many users, not model quality. Per stage: wall seconds of the
process (start-up included), rows (the stage summary's: events for ingest, training sequences for pretrain,
rows written otherwise) and the peak RSS of the Python driver, of the Python workers it started and of the
Spark JVM, sampled over its process tree (``stages.bench.proctree``). The Spark JVM's heap is capped by
``LUM_SPARK_DRIVER_MEMORY`` (inherited by the stage processes), so its RSS says little about the data size.
Disk per stage: ``peak_disk_mb``, the most the stage added to the file system of ``dir`` at once (spill and
shuffle files there included; other writers on that file system count too), and ``warehouse_mb``, the
warehouse's size on disk after it. The summary's ``peak_disk_mb`` is the largest warehouse-before-a-stage plus
that stage's peak: the free disk the whole run needs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.bench.proctree import MB, run_sampled
from stages.core.dates import check_ds, next_day
from stages.warehouse.facade import Warehouse

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]  # the directory holding the stages package
DAILY = ("sequences", "pretrain", "infer", "join", "maintain")  # the DAG's daily tasks, in order
ROWS_KEY = {"ingest": "events", "pretrain": "sequences"}  # summary key of the rows; "rows" for the others
QUICK = {"users": 300, "days": 2, "run_days": 1, "max_steps": 2, "conditions": "top:2", "items": 200,
         "categories": 4}


@dataclass(frozen=True)
class Config:
    """Options of ``lum bench scale`` (``--users N`` or ``--set key=value``)."""

    users: int = 100_000  # synthetic users: the size being measured
    items: int = 2_000  # synthetic items
    categories: int = 18  # synthetic item categories (infer's "all" conditions per user)
    days: int = 3  # days of synthetic events, from ``start``
    start: str = "2000-01-01"  # first day of events; the daily stages run from the day after
    run_days: int = 2  # consecutive days the daily stages run (the first without knowledge to join)
    seed: int = 0  # synthetic data seed
    max_steps: int = 20  # pretrain optimizer steps per day (a bounded run: memory and time, not quality)
    d_model: int = 32  # pretrain model width (a small model)
    n_layers: int = 1  # pretrain transformer blocks
    conditions: str = "all"  # infer's conditions per user ("all" | "top:K" | "list:...")
    interval: float = 0.2  # seconds between memory samples
    dir: str | None = None  # root of the throw-away warehouse; None: a new temp dir
    keep: bool = False  # keep the warehouse and the stage logs (paths in the report) instead of deleting them

    def check(self) -> None:
        for name in ("users", "items", "categories", "days", "run_days", "max_steps", "d_model", "n_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"bench scale: {name} must be >= 1, got {getattr(self, name)}")
        if self.run_days >= self.days:
            raise ValueError(f"bench scale: run_days ({self.run_days}) must be < days ({self.days}): the daily "
                             "stages run on the days after the first")
        if not self.interval > 0:
            raise ValueError(f"bench scale: interval must be > 0 seconds, got {self.interval}")
        check_ds(self.start, name="start")


def commands(cfg: Config, warehouse: str) -> list[tuple[str, list[str]]]:
    """(label, argv) of every process, in order: the ingest, then per day sequences, pretrain, infer, join, maintain."""
    python = [sys.executable, "-m", "stages"]
    out = [("ingest", [*python, "ingest", "synthetic", "--users", str(cfg.users), "--items", str(cfg.items),
                       "--categories", str(cfg.categories), "--days", str(cfg.days), "--seed", str(cfg.seed),
                       "--start", cfg.start, "--warehouse", warehouse])]
    sets = {"pretrain": [f"max_steps={cfg.max_steps}", f"d_model={cfg.d_model}", f"n_layers={cfg.n_layers}",
                         f"d_ff={4 * cfg.d_model}", "warmup_steps=1"],
            "infer": [f"conditions={cfg.conditions}"],
            # the first run day has no knowledge of the day before (nothing ran then): null LUM columns
            "join": ["allow_stale_knowledge=true"]}
    ds = cfg.start
    for _ in range(cfg.run_days):
        ds = next_day(ds)
        for stage in DAILY:
            argv = [*python, "run", stage, "--ds", ds, "--warehouse", warehouse]
            for item in sets.get(stage, ()):
                argv += ["--set", item]
            out.append((f"{stage}@{ds}", argv))
    return out


def last_json_line(path: str) -> dict[str, Any]:
    """The command's one-line JSON summary (its last stdout line); {} when there is none."""
    lines = [line for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    try:
        out = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        return {}
    return out if isinstance(out, dict) else {}


def _last_error(path: str) -> str:
    lines = [line for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("lum: error:")]
    return (errors or lines or ["(no output)"])[-1][:300]


def tree_mb(path: str | Path) -> float:
    """MiB allocated on disk to the files under ``path`` (as ``du``; 0 when it does not exist)."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
            except FileNotFoundError:  # removed while walking
                continue
    return round(total / MB, 1)


def measure(label: str, argv: list[str], logs: Path, cfg: Config, warehouse: str | None = None) -> dict[str, Any]:
    """Run one stage process under the sampler; its report entry (ValueError when it fails). Disk is sampled
    on the file system of ``logs``; ``warehouse`` (a local folder) is sized after the stage."""
    stem = label.replace("@", "_")
    stdout, stderr = str(logs / f"{stem}.out"), str(logs / f"{stem}.err")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    log.info("bench scale: %s", label)
    result = run_sampled(argv, stdout=stdout, stderr=stderr, env=env, interval=cfg.interval, disk_path=str(logs))
    if result.returncode != 0:
        raise ValueError(f"bench scale: {label} exited {result.returncode}: {_last_error(stderr)}")
    summary = last_json_line(stdout)
    stage = label.partition("@")[0]
    rows = summary.get(ROWS_KEY.get(stage, "rows"))
    if stage == "maintain":  # rows of the day's partitions it kept tidy, over every table
        rows = sum(int(t.get("rows") or 0) for t in summary.get("tables", []))
    entry = {"seconds": round(result.seconds, 2),
             "peak_rss_mb": {k: result.peak_rss_mb[k] for k in ("driver", "workers", "jvm")},
             "rows": int(rows) if isinstance(rows, (int, float)) else None,
             "processes": {k: v for k, v in result.processes.items() if v}, "samples": result.samples,
             "stage_seconds": summary.get("seconds"), "peak_disk_mb": result.peak_disk_mb,
             "warehouse_mb": tree_mb(warehouse) if warehouse is not None else None}
    log.info("bench scale: %s %.1f s, driver %.0f MiB, workers %.0f MiB, jvm %.0f MiB, rows %s, disk +%s MiB at "
             "peak, warehouse %s MiB", label, entry["seconds"], *entry["peak_rss_mb"].values(), entry["rows"],
             entry["peak_disk_mb"], entry["warehouse_mb"])
    return entry


def table_rows(stages: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One printable row per stage: seconds, rows, peak RSS per process class, peak disk added and the
    warehouse's size after it (MiB)."""
    return [{"stage": label, "seconds": e["seconds"], "rows": e["rows"],
             "driver_mb": e["peak_rss_mb"]["driver"], "workers_mb": e["peak_rss_mb"]["workers"],
             "jvm_mb": e["peak_rss_mb"]["jvm"], "disk_mb": e.get("peak_disk_mb"),
             "warehouse_mb": e.get("warehouse_mb")} for label, e in stages.items()]


def peak_disk_mb(stages: dict[str, dict[str, Any]]) -> float:
    """The most disk the run held at once: max over stages of the warehouse before it plus its peak."""
    before, most = 0.0, 0.0
    for entry in stages.values():
        most = max(most, before + (entry.get("peak_disk_mb") or 0.0), entry.get("warehouse_mb") or 0.0)
        before = entry.get("warehouse_mb") or before
    return round(most, 1)


def run(cfg: Config, *, warehouse: Warehouse | str | None) -> dict[str, Any]:
    """Run and measure every stage in a temp warehouse; ``warehouse`` is neither read nor written.

    Report: ``users``, ``stages`` ({"<stage>@<ds>": {seconds, peak_rss_mb: {driver, workers, jvm}, rows, ...}},
    the ingest under ``"ingest"``), ``table``, ``summary``, ``config``, ``warehouse`` (when kept).
    """
    del warehouse
    cfg.check()
    root = Path(cfg.dir or tempfile.mkdtemp(prefix="lum-bench-scale-"))
    bench_uri = str(root / "warehouse")
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stages: dict[str, dict[str, Any]] = {}
    try:
        for label, argv in commands(cfg, bench_uri):
            stages[label] = measure(label, argv, logs, cfg, warehouse=bench_uri)
    finally:
        if not cfg.keep:
            shutil.rmtree(root, ignore_errors=True)
    entries = stages.values()
    summary = {"users": cfg.users, "seconds": round(sum(e["seconds"] for e in entries), 1),
               "max_driver_mb": max(e["peak_rss_mb"]["driver"] for e in entries),
               "max_jvm_mb": max(e["peak_rss_mb"]["jvm"] for e in entries), "peak_disk_mb": peak_disk_mb(stages)}
    return {"users": cfg.users, "stages": stages, "table": table_rows(stages), "summary": summary,
            "config": dataclasses.asdict(cfg), "warehouse": bench_uri if cfg.keep else None,
            "logs": str(logs) if cfg.keep else None}
