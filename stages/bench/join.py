"""``lum bench join``: rows/s of the point-in-time join (stages.join.stage) on synthetic tables, local Spark.

Sizes: ``FULL`` or, with ``quick``, ``QUICK``; any size field set overrides its preset value. The tables are
generated with numpy into a throw-away warehouse under the temp dir (``dir`` to choose it, ``keep`` to keep
it), never into the user's warehouse. Knowledge covers ``knowledge_coverage`` of the users, so the null path is
timed too. Timed: ``join.run`` for one day with the Spark session already started (start-up reported apart).
user_knowledge holds users x conditions x D float32 values; the Spark driver memory comes from
``LUM_SPARK_DRIVER_MEMORY``.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from stages.core.spark import get_spark
from stages.join import stage as join
from stages.warehouse.facade import Warehouse

log = logging.getLogger(__name__)

FULL = {"samples": 10_000_000, "users": 1_000_000, "items": 20_000, "categories": 8, "dim": 32}
QUICK = {"samples": 20_000, "users": 2_000, "items": 500, "categories": 8, "dim": 32}
DAY, KNOWLEDGE_DAY = "2000-01-02", "2000-01-01"


@dataclass(frozen=True)
class Config:
    """Options of ``lum bench join`` (``--set key=value``)."""

    samples: int | None = None  # sample rows of the joined day; None: the preset's
    users: int | None = None  # user ids 0..users-1 of the samples; None: the preset's
    items: int | None = None  # items dimension rows; None: the preset's
    categories: int | None = None  # item categories = conditions per user; None: the preset's
    dim: int | None = None  # embedding width D; None: the preset's
    knowledge_coverage: float = 0.9  # share of users with knowledge; the rest exercise the null-column path
    seed: int = 0  # numpy seed of the generated tables
    similarity: str = "numpy"  # the join's Config.similarity
    dir: str | None = None  # root of the throw-away warehouse; None: a new temp dir
    keep: bool = False  # keep the generated warehouse (its path is in the report) instead of deleting it


SIZES = tuple(FULL)  # the Config fields that take their default from FULL when left None


def _embeddings(rng: np.random.Generator, n: int, dim: int) -> pa.FixedSizeListArray:
    values = pa.array(rng.standard_normal(n * dim, dtype=np.float32))
    return pa.FixedSizeListArray.from_arrays(values, dim)


def generate(wh: Warehouse, *, samples: int, users: int, items: int, categories: int, dim: int,
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
    # user_knowledge in chunks of users (users x conditions x dim floats in all): one staged commit.
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


def run(cfg: Config, *, warehouse: Warehouse | str | None) -> dict[str, Any]:
    """Generate, join one day, report rows/s. ``warehouse`` is neither read nor written (a temp warehouse is)."""
    del warehouse
    sizes = {k: FULL[k] if getattr(cfg, k) is None else getattr(cfg, k) for k in SIZES}
    root = cfg.dir or tempfile.mkdtemp(prefix="lum-bench-join-")
    bench_uri = f"{root.rstrip('/')}/warehouse"
    bench = Warehouse(bench_uri)
    try:
        t0 = time.perf_counter()
        counts = generate(bench, knowledge_coverage=cfg.knowledge_coverage, seed=cfg.seed, **sizes)
        gen_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        get_spark()
        spark_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        summary = join.run(join.Config(similarity=cfg.similarity), ds=DAY, warehouse=bench)
        join_s = time.perf_counter() - t0
    finally:
        if not cfg.keep:
            shutil.rmtree(root, ignore_errors=True)
    rows_per_s = sizes["samples"] / join_s
    row = {"similarity": cfg.similarity, "samples": sizes["samples"], "users": sizes["users"],
           "items": sizes["items"], "conditions": sizes["categories"], "dim": sizes["dim"],
           "join_s": round(join_s, 2), "rows_per_s": round(rows_per_s, 1),
           "without_knowledge": summary["rows_without_knowledge"]}
    log.info("bench join: %d rows in %.1f s = %.0f rows/s", sizes["samples"], join_s, rows_per_s)
    return {
        "table": [row],
        "summary": {"rows_per_s": round(rows_per_s, 1), "samples": sizes["samples"], "join_s": round(join_s, 2)},
        "sizes": sizes, "counts": counts, "generate_s": round(gen_s, 2), "spark_start_s": round(spark_s, 2),
        "join_summary": summary, "warehouse": bench_uri if cfg.keep else None,
    }
