"""``lum bench join``: rows/s of the point-in-time join (stages.join.stage) on synthetic tables, local Spark.

Sizes (``--set key=value`` overrides each): full = 10M samples, 1M users x 8 conditions, 20k items,
D = 32; ``--quick`` = 20k samples, 2k users. The tables are generated with numpy (vectorised, seconds)
and written through ``Warehouse.write_partition`` into a throw-away warehouse under /tmp (``dir`` to
choose it, ``keep=true`` to keep it), never into the user's warehouse. Knowledge covers
``knowledge_coverage`` of the users (default 0.9) so the null path is exercised too.

Timed: ``join.run`` for one day, Spark session already started (start-up is reported separately);
``similarity=numpy|sql|arrow`` picks the join's similarity path (default numpy). Measured here (2 shared
cores, load 5-18, so +-30%): 1M samples / 100k users / 8 conditions / D 32: numpy 9.5k rows/s (106 s),
sql 5.6k (178 s; earlier 6.3k), arrow 6.1k (163 s); 200k / 20k: numpy 3.9k, sql 2.8k-4.1k (fixed costs dominate:
Spark jobs, the knowledge checks, the persisted check pass and the write).
Data sizes: user_knowledge = users x conditions x D x 4 B (full: 1.0 GB), samples ~40 B/row.
Memory/disk at full size: ~3 GB of parquet under /tmp, Spark driver 4g (``LUM_SPARK_DRIVER_MEMORY``).
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import tempfile
import time
from typing import Any

import numpy as np
import pyarrow as pa

log = logging.getLogger(__name__)

FULL = {"samples": 10_000_000, "users": 1_000_000, "items": 20_000, "categories": 8, "dim": 32}
QUICK = {"samples": 20_000, "users": 2_000, "items": 500, "categories": 8, "dim": 32}
DAY, KNOWLEDGE_DAY = "2000-01-02", "2000-01-01"


def _embeddings(rng: np.random.Generator, n: int, dim: int) -> pa.FixedSizeListArray:
    values = pa.array(rng.standard_normal(n * dim, dtype=np.float32))
    return pa.FixedSizeListArray.from_arrays(values, dim)


def generate(wh: Any, *, samples: int, users: int, items: int, categories: int, dim: int,
             knowledge_coverage: float = 0.9, seed: int = 0, chunk_users: int = 200_000) -> dict[str, int]:
    """Write items, dlrm_samples[DAY], user_knowledge / item_knowledge[KNOWLEDGE_DAY]; returns row counts."""
    rng = np.random.default_rng(seed)
    cats = [f"c{k:02d}" for k in range(categories)]
    item_ids = np.arange(items, dtype=np.int64)
    wh.write_table("items", pa.table({
        "item_id": item_ids, "title": pa.array([f"item {i}" for i in item_ids]),
        "category": pa.array([cats[i % categories] for i in item_ids]),
        "categories": pa.array([[cats[i % categories]] for i in item_ids], pa.list_(pa.string())),
    }))
    # Samples: unique (user, item, ts) by construction (ts = a distinct microsecond per row).
    start = dt.datetime.fromisoformat(DAY).replace(tzinfo=dt.UTC)
    offsets = np.sort(rng.choice(86_400_000_000, size=samples, replace=False)).astype(np.int64)
    ts = pa.array(int(start.timestamp() * 1_000_000) + offsets, pa.timestamp("us", tz="UTC"))
    rating = rng.integers(1, 6, samples).astype(np.float32)
    wh.write_partition("dlrm_samples", pa.table({
        "user_id": rng.integers(0, users, samples, dtype=np.int64),
        "item_id": rng.integers(0, items, samples, dtype=np.int64),
        "ts": ts, "label": (rating >= 4).astype(np.int32), "rating": rating,
        "scenario": pa.array(["rating"] * samples),
    }), ds=DAY)
    known_users = np.flatnonzero(rng.random(users) < knowledge_coverage).astype(np.int64)
    version = f"lum-{KNOWLEDGE_DAY}"
    stager_rows = 0
    # user_knowledge in chunks of users (full size: 7.2M rows, ~1 GB of floats): one staged commit.
    stager = wh.stage_partition("user_knowledge", ds=KNOWLEDGE_DAY, run_id="bench-join", dim=dim)
    for lo in range(0, known_users.size, chunk_users):
        chunk = known_users[lo:lo + chunk_users]
        n = chunk.size * categories
        stager.write(pa.table({
            "user_id": np.repeat(chunk, categories),
            "condition": pa.array(np.tile(np.array([f"category={c}" for c in cats]), chunk.size)),
            "embedding": _embeddings(rng, n, dim),
            "model_version": pa.array([version] * n),
            "history_len": pa.array(np.full(n, 50, np.int32)),
        }))
        stager_rows += n
    stager.finish()
    wh.commit_staged("user_knowledge", ds=KNOWLEDGE_DAY, run_id="bench-join")
    wh.write_partition("item_knowledge", pa.table({
        "item_id": item_ids, "embedding": _embeddings(rng, items, dim),
        "model_version": pa.array([version] * items),
    }), ds=KNOWLEDGE_DAY)
    return {"samples": samples, "user_knowledge": stager_rows, "item_knowledge": items,
            "users_with_knowledge": int(known_users.size)}


def run_bench(opts: dict, *, quick: bool, warehouse: str) -> dict[str, Any]:
    """Generate, join one day, report rows/s. ``warehouse`` is not written (a /tmp warehouse is used)."""
    from stages.core.spark import get_spark
    from stages.join import stage as join
    from stages.warehouse.facade import Warehouse

    sizes = dict(QUICK if quick else FULL)
    opts = dict(opts)
    keep = bool(opts.pop("keep", False))
    root = opts.pop("dir", None)
    coverage = float(opts.pop("knowledge_coverage", 0.9))
    seed = int(opts.pop("seed", 0))
    similarity = str(opts.pop("similarity", "numpy"))
    for key in list(opts):
        if key not in sizes:
            raise ValueError(f"bench join: unknown option {key!r}; known: {', '.join(sorted(sizes))}, "
                             "knowledge_coverage, seed, similarity, dir, keep")
        sizes[key] = int(opts.pop(key))
    root = root or tempfile.mkdtemp(prefix="lum-bench-join-")
    bench_wh = f"{root.rstrip('/')}/warehouse"
    try:
        t0 = time.perf_counter()
        counts = generate(Warehouse(bench_wh), knowledge_coverage=coverage, seed=seed, **sizes)
        gen_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        get_spark()
        spark_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        summary = join.run(join.Config(similarity=similarity), ds=DAY, warehouse=bench_wh)
        join_s = time.perf_counter() - t0
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    rows_per_s = sizes["samples"] / join_s
    row = {"similarity": similarity, "samples": sizes["samples"], "users": sizes["users"], "items": sizes["items"],
           "conditions": sizes["categories"], "dim": sizes["dim"], "join_s": round(join_s, 2),
           "rows_per_s": round(rows_per_s, 1), "without_knowledge": summary["rows_without_knowledge"]}
    log.info("bench join: %d rows in %.1f s = %.0f rows/s", sizes["samples"], join_s, rows_per_s)
    return {
        "table": [row],
        "summary": {"rows_per_s": round(rows_per_s, 1), "samples": sizes["samples"], "join_s": round(join_s, 2)},
        "sizes": sizes, "counts": counts, "generate_s": round(gen_s, 2), "spark_start_s": round(spark_s, 2),
        "join_summary": summary, "quick": quick, "warehouse": bench_wh if keep else None,
    }
