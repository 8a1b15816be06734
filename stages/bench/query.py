"""``lum bench query``: latency of ``query_user_knowledge`` lookups in one big partition.

Builds a synthetic ``user_knowledge`` partition directly (vectorised numpy, no model): ``users`` users x
``conditions`` conditions x ``dim`` float32, sorted by ``user_id`` as infer writes it, staged like infer
(``Warehouse.stage_partition`` files of ``file_rows`` rows in parquet row groups of ``row_group_rows``,
one commit) in a throwaway warehouse. A lookup decodes one whole row group, so the group size sets the
cost. Then it times ``lookups`` calls of each kind, every call from scratch (open the Delta table, prune
partitions, scan with the row-group filter), as a CLI user or a serving job would:
- ``single``: one random user, given day;  ``single_newest``: one user, newest day (reads the log
  for the partition list);  ``batch_100``: 100 random users in one call;  ``unknown``: a missing user.
The summary says whether ``single`` meets ``TARGET_P50_MS``. ``QUICK`` shrinks the default size.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from stages.query.lookup import query_user_knowledge
from stages.warehouse.facade import Warehouse

log = logging.getLogger(__name__)

DS = "2000-12-01"
TARGET_P50_MS = 20  # one user's lookup must feel instant on the command line and in a serving job
QUICK = {"users": 50_000, "lookups": 20}  # --quick: a partition that builds in moments


@dataclass(frozen=True)
class Config:
    """Options of ``lum bench query`` (``--set key=value``)."""

    users: int = 1_000_000  # users in the partition: the size lookups must stay fast at
    conditions: int = 1  # conditions per user, i.e. rows per user
    dim: int = 32  # embedding width: sets the bytes per row
    row_group_rows: int = 8_192  # parquet row-group size (infer's default): a lookup decodes one group
    file_rows: int = 65_536  # rows per staged file: how many files the log statistics choose among
    lookups: int = 200  # timed calls per kind (batch_100 makes a tenth of them)
    seed: int = 0  # the data and the users looked up

    def check(self) -> None:
        if self.users < 100 or self.lookups < 1:
            raise ValueError(f"users must be >= 100 and lookups >= 1, got users={self.users} "
                             f"lookups={self.lookups}")
        for name in ("conditions", "dim", "row_group_rows", "file_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def synthetic_knowledge(users: int, conditions: int, dim: int, seed: int) -> pa.Table:
    """``users * conditions`` rows sorted by (user_id, condition); user ids 1, 3, 5, ... (odd)."""
    rng = np.random.default_rng(seed)
    n = users * conditions
    user_ids = np.repeat(np.arange(users, dtype=np.int64) * 2 + 1, conditions)
    names = np.array([f"category=c{j:02d}" for j in range(conditions)], dtype=object)
    emb = rng.standard_normal((n, dim), dtype=np.float32)
    return pa.table({
        "ds": pa.array(np.full(n, DS, dtype=object), pa.string()),
        "user_id": pa.array(user_ids),
        "condition": pa.array(np.tile(names, users), pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), dim),
        "model_version": pa.array(np.full(n, "lum-bench", dtype=object), pa.string()),
        "history_len": pa.array(rng.integers(1, 200, n, dtype=np.int32)),
    })


def write_partition(wh: Warehouse, table: pa.Table, row_group_rows: int, file_rows: int) -> int:
    """Stage ``file_rows``-row files of ``row_group_rows``-row groups, then ONE commit (as infer does)."""
    stager = wh.stage_partition("user_knowledge", ds=DS, run_id="bench")
    for start in range(0, table.num_rows, file_rows):
        stager.write(table.slice(start, file_rows), row_group_size=row_group_rows)
    stager.finish()
    wh.commit_staged("user_knowledge", ds=DS, run_id="bench")
    return len(stager.files)


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "max_ms": round(float(ms.max()), 2)}


def run(cfg: Config, *, warehouse: Warehouse | str | None) -> dict[str, Any]:
    """Build the partition in a temp warehouse, time the lookups; returns the report.

    ``warehouse`` is not touched (the bench needs a partition of a known size, so it builds its own).
    Report: ``table`` (one row per lookup kind: calls, p50/p95/max ms), ``summary``, ``config``,
    ``build_seconds``, ``files``.
    """
    cfg.check()
    root = tempfile.mkdtemp(prefix="lum-bench-query-")
    try:
        wh = Warehouse(root)
        t0 = time.perf_counter()
        table = synthetic_knowledge(cfg.users, cfg.conditions, cfg.dim, cfg.seed)
        files = write_partition(wh, table, cfg.row_group_rows, cfg.file_rows)
        build_s = time.perf_counter() - t0
        log.info("built %d rows in %.1f s", table.num_rows, build_s)
        rng = np.random.default_rng(cfg.seed + 1)
        existing = table.column("user_id").to_numpy()
        kinds = {
            "single": lambda: [int(rng.choice(existing))],
            "single_newest": lambda: [int(rng.choice(existing))],
            "batch_100": lambda: [int(u) for u in rng.choice(existing, 100, replace=False)],
            "unknown": lambda: [int(rng.integers(0, cfg.users)) * 2],  # even ids are never written
        }
        query_user_knowledge(root, user_ids=[1], ds=DS)  # warm the OS page cache and imports
        rows_out: list[dict[str, Any]] = []
        for kind, pick in kinds.items():
            seconds: list[float] = []
            for _ in range(max(1, cfg.lookups // 10) if kind == "batch_100" else cfg.lookups):
                ids = pick()
                start = time.perf_counter()
                out = query_user_knowledge(root, user_ids=ids, ds=None if kind == "single_newest" else DS)
                seconds.append(time.perf_counter() - start)
                expected = 0 if kind == "unknown" else len(ids) * cfg.conditions
                if out.num_rows != expected:
                    raise RuntimeError(f"{kind} lookup of {ids[:3]} returned {out.num_rows} rows, expected {expected}")
            rows_out.append({"lookup": kind, "users_in_partition": cfg.users, "calls": len(seconds),
                             **_percentiles(seconds)})
        single = rows_out[0]
        summary = {"users": cfg.users, "single_p50_ms": single["p50_ms"], "single_p95_ms": single["p95_ms"],
                   "target_p50_ms": TARGET_P50_MS, "meets_target": single["p50_ms"] < TARGET_P50_MS}
        return {"table": rows_out, "summary": summary, "config": dataclasses.asdict(cfg),
                "build_seconds": round(build_s, 2), "files": files}
    finally:
        shutil.rmtree(root, ignore_errors=True)
