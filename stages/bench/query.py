"""``lum bench query``: latency of ``query_user_knowledge`` lookups in one big partition.

Builds a synthetic ``user_knowledge`` partition directly (vectorised numpy, no model): ``users`` users x
``conditions`` conditions x ``dim`` float32, sorted by ``user_id`` as infer writes it, written like
infer writes (``Warehouse.stage_partition`` files of ``file_rows`` rows, one commit) in parquet row
groups of ``row_group_rows`` (default 8,192, infer's default, in 65,536-row files: 16 files x 8
groups for 1M users), in a throwaway warehouse. A lookup decodes one whole row group, so the group
size sets the cost: measured p50 ~10 ms with 8,192-row groups vs ~60-90 ms with 65,536-row groups
(``--set row_group_rows=65536``) on the shared 2-core machine. Then it times ``lookups`` calls of each kind, every call from scratch (open the Delta
table, prune partitions, scan with the row-group filter), as a CLI user or a serving job would:
- ``single``: one random user, given day;  ``single_newest``: one user, newest day (reads the log
  for the partition list);  ``batch_100``: 100 random users in one call;  ``unknown``: a missing user.
Target: ``single`` p50 < 20 ms with 1M users (default size). ``quick``: 50k users, 20 lookups.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from typing import Any

import numpy as np
import pyarrow as pa

from stages.query.lookup import query_user_knowledge

log = logging.getLogger(__name__)

DS = "2000-12-01"
DEFAULTS = {"users": 1_000_000, "conditions": 1, "dim": 32, "row_group_rows": 8_192,
            "file_rows": 65_536, "lookups": 200, "seed": 0}
QUICK = {"users": 50_000, "lookups": 20}


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


def write_partition(root: str, table: pa.Table, row_group_rows: int, file_rows: int) -> int:
    """Stage ``file_rows``-row files of ``row_group_rows``-row groups, then ONE commit (as infer does)."""
    from stages.warehouse.facade import Warehouse

    wh = Warehouse(root)
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


def run_bench(opts: dict, *, quick: bool, warehouse: str) -> dict[str, Any]:
    """Build the partition in a temp warehouse (``warehouse`` is not touched), time the lookups."""
    unknown_opts = sorted(set(opts) - set(DEFAULTS))
    if unknown_opts:
        raise ValueError(f"unknown bench query option(s): {', '.join(unknown_opts)}; known: {', '.join(DEFAULTS)}")
    cfg = {**DEFAULTS, **(QUICK if quick else {}), **opts}
    users, lookups = int(cfg["users"]), int(cfg["lookups"])
    if users < 100 or lookups < 1:
        raise ValueError(f"users must be >= 100 and lookups >= 1, got users={users} lookups={lookups}")
    root = tempfile.mkdtemp(prefix="lum-bench-query-")
    try:
        t0 = time.perf_counter()
        table = synthetic_knowledge(users, int(cfg["conditions"]), int(cfg["dim"]), int(cfg["seed"]))
        files = write_partition(root, table, int(cfg["row_group_rows"]), int(cfg["file_rows"]))
        build_s = time.perf_counter() - t0
        log.info("built %d rows in %.1f s", table.num_rows, build_s)
        rng = np.random.default_rng(int(cfg["seed"]) + 1)
        existing = table.column("user_id").to_numpy()
        kinds = {
            "single": lambda: [int(rng.choice(existing))],
            "single_newest": lambda: [int(rng.choice(existing))],
            "batch_100": lambda: [int(u) for u in rng.choice(existing, 100, replace=False)],
            "unknown": lambda: [int(rng.integers(0, users)) * 2],  # even ids are never written
        }
        query_user_knowledge(root, user_ids=[1], ds=DS)  # warm the OS page cache and imports
        rows_out: list[dict[str, Any]] = []
        for kind, pick in kinds.items():
            seconds: list[float] = []
            for _ in range(max(1, lookups // 10) if kind == "batch_100" else lookups):
                ids = pick()
                start = time.perf_counter()
                out = query_user_knowledge(root, user_ids=ids, ds=None if kind == "single_newest" else DS)
                seconds.append(time.perf_counter() - start)
                expected = 0 if kind == "unknown" else len(ids) * int(cfg["conditions"])
                if out.num_rows != expected:
                    raise RuntimeError(f"{kind} lookup of {ids[:3]} returned {out.num_rows} rows, expected {expected}")
            rows_out.append({"lookup": kind, "users_in_partition": users, "calls": len(seconds),
                             **_percentiles(seconds)})
        single = rows_out[0]
        summary = {"users": users, "single_p50_ms": single["p50_ms"], "single_p95_ms": single["p95_ms"],
                   "target_p50_ms": 20, "meets_target": single["p50_ms"] < 20}
        return {"table": rows_out, "summary": summary, "config": cfg, "build_seconds": round(build_s, 2),
                "files": files}
    finally:
        shutil.rmtree(root, ignore_errors=True)
