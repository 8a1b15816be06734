"""``lum bench query``: knowledge lookups in a many-day table, before and after the maintain stage.

Builds ``user_knowledge`` in a throwaway warehouse (``stages.bench.query_data``): day D = ``users`` x
``conditions`` rows of ``dim`` float32, staged as infer stages it (writes of ``file_rows`` sharing files up to
``file_mb``; ``shards`` > 1: hash shares with overlapping user ranges), plus ``days - 1`` earlier days as hard
links of D's files, so the log lists ``days`` partitions.
Every call starts from scratch (open the Delta table, list the snapshot, pick files and row groups), timed:
- ``single``: one random user of day D;  ``single_newest``: one user, newest day;  ``batch_100``: 100 users in
  one ``query_user_knowledge`` call;  ``unknown``: a missing user;
- ``many``: ``query_many`` of ``batch_users`` random users (Arrow in, Arrow out), reported as users/s;
  ``many_baseline`` (``baseline``): the same batches by the previous path (``stages.bench.query_baseline``),
  alternating which goes first; the bench fails unless both return the same table.
Then (``maintain``) the maintain stage runs for D (user_knowledge only: clustering by user, vacuum, checkpoint),
the earlier days are re-linked to D's rewritten files as earlier daily runs would have left them, a checkpoint
is written, and every kind is timed again. The summary compares ``single`` p50 and ``many`` users/s with
``TARGET_P50_MS`` and ``TARGET_BATCH_USERS_S`` (and ``many`` with ``many_baseline``: ``many_speedup`` in wall time,
``many_cpu_ratio`` in the process's CPU seconds, which other jobs on the box skew less). ``QUICK`` shrinks the
default size.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from stages.bench.query_baseline import query_many_baseline
from stages.bench.query_data import link_days, synthetic_knowledge, write_partition
from stages.core.dates import days_before
from stages.infer.stage import Config as InferConfig
from stages.maintain import stage as maintain
from stages.query.lookup import query_many, query_user_knowledge
from stages.warehouse.facade import Warehouse

log = logging.getLogger(__name__)

DS = "2000-12-30"  # day D, the newest; the earlier days precede it
TARGET_P50_MS = 20  # one user's lookup must feel instant on the command line and in a serving job
TARGET_BATCH_USERS_S = 100_000  # a scoring job reading a day's knowledge for many users at once
QUICK = {"users": 20_000, "conditions": 4, "days": 3, "lookups": 20, "batch_users": 5_000}


@dataclass(frozen=True)
class Config:
    """Options of ``lum bench query`` (``--set key=value``)."""

    users: int = 1_000_000  # users in day D
    conditions: int = 16  # conditions per user, i.e. rows per user
    dim: int = 16  # embedding width: sets the bytes per row
    days: int = 30  # partitions in the table (the log every lookup lists)
    shards: int = 1  # hash shares day D is staged in (a multi-process infer); > 1 overlaps their user ranges
    row_group_rows: int = 8_192  # parquet row-group size (infer's default): a lookup decodes one group
    file_rows: int = 65_536  # rows per staged write (infer: chunk_users x conditions)
    file_mb: int = InferConfig.file_mb  # staged writes share files up to this size, as infer's (0: a file each)
    lookups: int = 200  # timed calls per single-user kind (batch_100 makes a tenth of them)
    batch_users: int = 100_000  # users per query_many call
    batches: int = 3  # timed query_many calls
    baseline: bool = True  # time the previous batch path on the same batches (many_baseline)
    maintain: bool = True  # run the maintain stage, then time every kind again
    compression: str = "ZSTD"  # of the files the maintain stage rewrites (its option of that name)
    seed: int = 0  # the data and the users looked up

    def check(self) -> None:
        if self.users < 100 or self.lookups < 1:
            raise ValueError(f"users must be >= 100 and lookups >= 1, got users={self.users} "
                             f"lookups={self.lookups}")
        for name in ("conditions", "dim", "days", "shards", "row_group_rows", "file_rows", "batch_users", "batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.file_mb < 0:
            raise ValueError(f"file_mb must be >= 0 (0: a file per write), got {self.file_mb}")
        if self.batch_users > self.users:
            raise ValueError(f"batch_users must be <= users ({self.users}), got {self.batch_users}")


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "max_ms": round(float(ms.max()), 2)}


def _files(wh: Warehouse) -> tuple[int, int]:
    """(files of day D, files in the snapshot)."""
    actions = pa.table(wh.delta_table("user_knowledge").get_add_actions(flatten=True))
    return sum(d == DS for d in actions.column("partition.ds").to_pylist()), actions.num_rows


def time_lookups(root: str, cfg: Config, existing: np.ndarray, phase: str) -> list[dict[str, Any]]:
    """One report row per lookup kind; every result is checked for its row count."""
    rng = np.random.default_rng(cfg.seed + 1)
    kinds: dict[str, tuple[int, Callable[[], list[int]]]] = {
        "single": (cfg.lookups, lambda: [int(rng.choice(existing))]),
        "single_newest": (cfg.lookups, lambda: [int(rng.choice(existing))]),
        "batch_100": (max(1, cfg.lookups // 10), lambda: [int(u) for u in rng.choice(existing, 100, replace=False)]),
        "unknown": (cfg.lookups, lambda: [int(rng.integers(0, cfg.users)) * 2]),  # even ids are never written
    }
    query_user_knowledge(root, user_ids=[1], ds=DS)  # warm the OS page cache and imports
    rows_out = []
    for kind, (calls, pick) in kinds.items():
        seconds: list[float] = []
        for _ in range(calls):
            ids = pick()
            start = time.perf_counter()
            out = query_user_knowledge(root, user_ids=ids, ds=None if kind == "single_newest" else DS)
            seconds.append(time.perf_counter() - start)
            expected = 0 if kind == "unknown" else len(ids) * cfg.conditions
            if out.num_rows != expected:
                raise RuntimeError(f"{kind} lookup returned {out.num_rows} rows, expected {expected}")
        users = 100 if kind == "batch_100" else 1
        rows_out.append({"phase": phase, "lookup": kind, "users_per_call": users, "calls": len(seconds),
                         **_percentiles(seconds), "users_per_s": round(users * len(seconds) / sum(seconds))})
    return rows_out + _time_many(root, cfg, existing, rng, phase)


def _time_many(root: str, cfg: Config, existing: np.ndarray, rng: np.random.Generator,
               phase: str) -> list[dict[str, Any]]:
    """``many`` (and ``many_baseline``) rows: ``batches`` random batches, both paths on each, alternating order."""
    paths = {"many": query_many, "many_baseline": query_many_baseline}
    seconds: dict[str, list[float]] = {kind: [] for kind in (paths if cfg.baseline else ["many"])}
    cpu = {kind: 0.0 for kind in seconds}  # the process's CPU seconds (all threads): what other jobs do not skew
    for i in range(cfg.batches):
        batch = pa.table({"user_id": pa.array(rng.choice(existing, cfg.batch_users, replace=False), pa.int64())})
        outs = {}
        for kind in (list(seconds) if i % 2 == 0 else list(seconds)[::-1]):
            start, cpu_start = time.perf_counter(), time.process_time()
            outs[kind] = paths[kind](root, batch, ds=DS)
            seconds[kind].append(time.perf_counter() - start)
            cpu[kind] += time.process_time() - cpu_start
            if outs[kind].num_rows != cfg.batch_users * cfg.conditions:
                raise RuntimeError(f"{kind} lookup returned {outs[kind].num_rows} rows, expected "
                                   f"{cfg.batch_users * cfg.conditions}")
        if cfg.baseline and not outs["many"].equals(outs["many_baseline"]):
            raise RuntimeError("query_many and the baseline path returned different tables")
        del outs
    return [{"phase": phase, "lookup": kind, "users_per_call": cfg.batch_users, "calls": len(s), **_percentiles(s),
             "users_per_s": round(cfg.batch_users * len(s) / sum(s)), "cpu_s_per_call": round(cpu[kind] / len(s), 2),
             "users_per_cpu_s": round(cfg.batch_users * len(s) / cpu[kind])} for kind, s in seconds.items()]


def _maintain(wh: Warehouse, cfg: Config, earlier: list[str]) -> dict[str, Any]:
    """The maintain stage for D, then the earlier days re-linked to its files and a checkpoint."""
    started = time.perf_counter()
    summary = maintain.run(maintain.Config(tables=("user_knowledge",), cluster=("user_knowledge",),
                                           row_group_rows=cfg.row_group_rows, compression=cfg.compression),
                           ds=DS, warehouse=wh)
    seconds = time.perf_counter() - started
    row = summary["tables"][0]
    if earlier and row["rewrite"] != "none":
        link_days(wh, DS, earlier)
        wh.checkpoint("user_knowledge")
    return {**row, "seconds": round(seconds, 2)}


def run(cfg: Config, *, warehouse: Warehouse | str | None) -> dict[str, Any]:
    """Build the table in a temp warehouse, time the lookups (before and after maintenance); returns the report.

    ``warehouse`` is not touched (the bench needs a table of a known size, so it builds its own). Report:
    ``table`` (one row per phase and lookup kind: calls, p50/p95/max ms, users/s), ``summary``, ``config``,
    ``build_seconds``, ``files`` (of day D and in the snapshot, per phase), ``maintain`` (the stage's row).
    """
    cfg.check()
    root = tempfile.mkdtemp(prefix="lum-bench-query-")
    try:
        wh = Warehouse(root)
        t0 = time.perf_counter()
        existing = np.arange(cfg.users, dtype=np.int64) * 2 + 1   # synthetic_knowledge's user ids
        chunks = synthetic_knowledge(cfg.users, cfg.conditions, cfg.dim, cfg.seed, DS,
                                     chunk_users=max(1, cfg.file_rows // cfg.conditions))
        write_partition(wh, chunks, DS, row_group_rows=cfg.row_group_rows, file_rows=cfg.file_rows, shards=cfg.shards,
                        file_bytes=cfg.file_mb << 20 if cfg.file_mb else None)
        earlier = [days_before(DS, i) for i in range(cfg.days - 1, 0, -1)]
        if earlier:
            link_days(wh, DS, earlier)
        build_s = time.perf_counter() - t0
        files = {"before": _files(wh)}
        log.info("built %d days of %d users in %.1f s", cfg.days, cfg.users, build_s)
        rows = time_lookups(root, cfg, existing, "before")
        stage = None
        if cfg.maintain:
            stage = _maintain(wh, cfg, earlier)
            files["after"] = _files(wh)
            rows += time_lookups(root, cfg, existing, "after")
        by = {(r["phase"], r["lookup"]): r for r in rows}
        summary = {"users": cfg.users, "conditions": cfg.conditions, "dim": cfg.dim, "days": cfg.days,
                   "target_p50_ms": TARGET_P50_MS, "target_batch_users_s": TARGET_BATCH_USERS_S}
        for phase in files:
            single, many = by[(phase, "single")], by[(phase, "many")]
            summary.update({f"single_p50_ms_{phase}": single["p50_ms"], f"single_p95_ms_{phase}": single["p95_ms"],
                            f"many_users_per_s_{phase}": many["users_per_s"],
                            f"meets_targets_{phase}": single["p50_ms"] < TARGET_P50_MS
                            and many["users_per_s"] >= TARGET_BATCH_USERS_S})
            if (phase, "many_baseline") in by:
                old = by[(phase, "many_baseline")]["users_per_s"]
                summary.update({f"many_users_per_s_baseline_{phase}": old,
                                f"many_speedup_{phase}": round(many["users_per_s"] / old, 2),
                                f"many_cpu_ratio_{phase}": round(by[(phase, "many_baseline")]["cpu_s_per_call"]
                                                                 / max(many["cpu_s_per_call"], 0.01), 2)})
        return {"table": rows, "summary": summary, "config": dataclasses.asdict(cfg),
                "build_seconds": round(build_s, 2), "files": files, "maintain": stage}
    finally:
        shutil.rmtree(root, ignore_errors=True)
