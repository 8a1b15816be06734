"""``lum bench join``: rows/s of the point-in-time join (stages.join.stage) against its old path, same data, one run.

Sizes: ``FULL`` or, with ``quick``, ``QUICK``; any size field set overrides its preset value. The tables are
generated with numpy into a throw-away warehouse under the temp dir (``dir`` to choose it, ``keep`` to keep
it), never into the user's warehouse. Knowledge covers ``knowledge_coverage`` of the users, so the null path is
timed too. Timed, ``repeats`` times each, alternating which goes first: ``join.run`` for one day and the old
path (stages.bench.join_baseline: global knowledge checks and group-by, pandas items, cached output), both
writing the same partition with the Spark session already started and warmed on a tiny day (``warmup``).
The two outputs must be equal bit for bit (``stages.join.reproduce.first_difference``, in user_id slices of
at most ``COMPARE_ROWS`` rows), else the bench fails. user_knowledge holds users x conditions x D float32
values; the Spark driver memory comes from ``LUM_SPARK_DRIVER_MEMORY``.
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

import schemas
from stages.bench.join_baseline import run_baseline
from stages.core.spark import get_spark
from stages.join import stage as join
from stages.join.reproduce import first_difference
from stages.warehouse.facade import Warehouse

log = logging.getLogger(__name__)

FULL = {"samples": 10_000_000, "users": 1_000_000, "items": 20_000, "categories": 8, "dim": 32}
QUICK = {"samples": 20_000, "users": 2_000, "items": 500, "categories": 8, "dim": 32}
WARMUP = {"samples": 2_000, "users": 200, "items": 50, "categories": 3, "dim": 4}
DAY, KNOWLEDGE_DAY = "2000-01-02", "2000-01-01"
PATHS = ("current", "baseline")
COMPARE_ROWS = 2_000_000  # output rows held per comparison slice (two copies of each)


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
    repeats: int = 1  # timed runs of each path (the report keeps the fastest and lists all)
    warmup: bool = True  # first run both paths untimed on a tiny generated day (JIT, Python workers)
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


def _time_path(path: str, cfg: Config, bench: Warehouse) -> tuple[float, int, int]:
    """(seconds, written version, rows without knowledge) of one join of DAY by ``path``."""
    t0 = time.perf_counter()
    if path == "current":
        summary = join.run(join.Config(similarity=cfg.similarity), ds=DAY, warehouse=bench)
        return time.perf_counter() - t0, summary["version"], summary["rows_without_knowledge"]
    result = run_baseline(bench, ds=DAY, k_ds=KNOWLEDGE_DAY)
    return time.perf_counter() - t0, result["version"], result["rows_without_knowledge"]


def compare_outputs(bench: Warehouse, versions: dict[str, int], users: int, rows: int) -> str | None:
    """None when both paths wrote the same rows (bit for bit); else the first difference, in one line."""
    key = tuple(schemas.get("dlrm_training").SPEC.key)
    slices = max(1, -(-rows // COMPARE_ROWS))
    step = -(-users // slices)
    for lo in range(0, users, step):
        where = [("user_id", ">=", lo), ("user_id", "<", lo + step)]
        got = {p: bench.read("dlrm_training", ds=DAY, version=v, filters=where) for p, v in versions.items()}
        difference = first_difference(got["current"], got["baseline"], key)
        if difference is not None:
            return f"user_id {lo}..{lo + step - 1}: {difference}"
    return None


def _warm_up(cfg: Config, root: str) -> None:
    """Both paths once on a tiny day of their own (JIT-compiles the JVM paths both use), untimed."""
    tiny = Warehouse(f"{root}/warmup")
    generate(tiny, seed=cfg.seed, **WARMUP)
    for path in PATHS:
        _time_path(path, cfg, tiny)


def run(cfg: Config, *, warehouse: Warehouse | str | None) -> dict[str, Any]:
    """Generate, join one day by both paths, check they agree, report rows/s and the ratio. ``warehouse`` is
    neither read nor written (a temp warehouse is)."""
    del warehouse
    if cfg.repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {cfg.repeats}")
    sizes = {k: FULL[k] if getattr(cfg, k) is None else getattr(cfg, k) for k in SIZES}
    root = cfg.dir or tempfile.mkdtemp(prefix="lum-bench-join-")
    bench_uri = f"{root.rstrip('/')}/warehouse"
    bench = Warehouse(bench_uri)
    seconds: dict[str, list[float]] = {p: [] for p in PATHS}
    versions: dict[str, int] = {}
    without: dict[str, int] = {}
    try:
        t0 = time.perf_counter()
        counts = generate(bench, knowledge_coverage=cfg.knowledge_coverage, seed=cfg.seed, **sizes)
        gen_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        get_spark()
        spark_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        if cfg.warmup:
            _warm_up(cfg, root.rstrip("/"))
        warmup_s = time.perf_counter() - t0
        for r in range(cfg.repeats):
            for path in PATHS if r % 2 == 0 else PATHS[::-1]:
                took, versions[path], without[path] = _time_path(path, cfg, bench)
                seconds[path].append(round(took, 2))
                log.info("bench join %s run %d: %d rows in %.1f s", path, r + 1, sizes["samples"], took)
        t0 = time.perf_counter()
        difference = compare_outputs(bench, versions, sizes["users"], sizes["samples"])
        compare_s = time.perf_counter() - t0
    finally:
        if not cfg.keep:
            shutil.rmtree(root, ignore_errors=True)
    if difference is not None or without["current"] != without["baseline"]:
        raise ValueError(f"bench join: the current path and the baseline wrote different rows: "
                         f"{difference or f'rows without knowledge {without}'}")
    best = {p: min(seconds[p]) for p in PATHS}
    rate = {p: sizes["samples"] / best[p] for p in PATHS}
    speedup = rate["current"] / rate["baseline"]
    table = [{"path": p, "samples": sizes["samples"], "users": sizes["users"], "items": sizes["items"],
              "conditions": sizes["categories"], "dim": sizes["dim"], "join_s": round(best[p], 2),
              "rows_per_s": round(rate[p]), "vs_baseline": round(rate[p] / rate["baseline"], 2),
              "without_knowledge": without[p]} for p in PATHS]
    log.info("bench join: current %.0f rows/s, baseline %.0f rows/s: %.2fx", rate["current"], rate["baseline"],
             speedup)
    return {
        "table": table,
        "summary": {"rows_per_s": round(rate["current"], 1), "baseline_rows_per_s": round(rate["baseline"], 1),
                    "speedup": round(speedup, 2), "samples": sizes["samples"], "join_s": round(best["current"], 2),
                    "outputs_equal": True},
        "seconds": seconds, "sizes": sizes, "counts": counts, "generate_s": round(gen_s, 2),
        "spark_start_s": round(spark_s, 2), "warmup_s": round(warmup_s, 2), "compare_s": round(compare_s, 2), "versions": versions,
        "warehouse": bench_uri if cfg.keep else None,
    }
