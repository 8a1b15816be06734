"""Stage ``join``: day D's samples with the LUM knowledge of the newest day strictly before D (LUM step 3).

``run(cfg, ds=D, warehouse=...)`` writes ``dlrm_training[ds = D]`` in one delta-rs commit: every row
of ``dlrm_samples[D]`` (rows out == rows in, keys unique, asserted before the commit) plus the LUM
columns of schemas/dlrm_training.py, from the knowledge partition chosen by stages.join.plan and
recorded per row in ``lum_knowledge_ds``. Nothing of day D or later is read except D's samples; of the
knowledge partition only the rows of D's sample users and items are grouped, checked and joined.

Day D needs the knowledge of D - lag (D-1 by default): when the run for that day failed, the join is a
``ValueError`` naming the missing day. ``allow_stale_knowledge = true`` accepts, with a warning, the newest
older partition, or none at all (a first-ever day: null LUM columns, ``fallback: "no_knowledge"``, a
``ValueError`` still with ``require_knowledge``); user/item knowledge of different newest days then use the
newest common day (``"common_partition"``). The summary's ``knowledge_ds`` / ``knowledge_lag_days`` and the
rows' ``lum_knowledge_ds`` record the day used. Samples whose user or item has no knowledge keep their
row with null LUM columns. Every error leaves ``dlrm_training`` untouched (stages.join.checks).
Every input is read at the version pinned when the run starts, and the commit records those versions
(stages.join.provenance), so ``lum run join --reproduce`` can rebuild the partition later.
``prepare`` and ``join_days`` are shared with the many-day join (stages.join.range).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from schemas import dlrm_training
from stages.core.dates import check_ds, days_before
from stages.core.spark import get_spark
from stages.join import provenance
from stages.join.checks import OutputCheck, check_samples_schema
from stages.join.frame import extended_conditions, training_plan
from stages.join.inputs import (
    Knowledge,
    items_frame,
    read_items,
    read_knowledge,
    resolve_conditions,
    sample_rows_by_day,
)
from stages.join.plan import knowledge_lag, resolve_knowledge
from stages.join.spec import JoinSpec, load_spec
from stages.warehouse.facade import Warehouse

log = logging.getLogger(__name__)

SIMILARITIES = ("numpy",)  # accepted values of Config.similarity
REMOVED_SIMILARITIES = ("sql", "arrow")  # former Spark-lambda / Arrow-UDF paths: a ValueError naming them


@dataclass(frozen=True)
class Config:
    """Options of ``lum run join`` (the consumer itself is described by its spec)."""

    spec: str = "dlrm"  # built-in spec name or path to a TOML/JSON spec (stages/join/spec.py)
    lag_days: int | None = None  # overrides the spec's lag; None = the spec's (default 1)
    allow_stale_knowledge: bool = False  # True: without D - lag's knowledge use the newest older one (or none)
    require_knowledge: bool = False  # with allow_stale_knowledge: no knowledge at all is still an error
    broadcast_items: bool = True  # item_knowledge to every Python task (items x D floats); False: shuffle join
    similarity: str = "numpy"  # the lum_match implementation: numpy per Arrow batch (stages.join.similarity)


@dataclass(frozen=True)
class Prepared:
    """What every day of a join shares: the spec, the lag, the warehouse, Spark, items, conditions, pins."""

    spec: JoinSpec
    lag: int  # knowledge partition <= ds - lag
    wh: Warehouse
    spark: Any
    items: Any  # broadcast Spark DataFrame (item_id, <target_feature>), built from Arrow
    conditions: list[str]  # the lum_match order
    extended: list[str]  # conditions, then the other item target conditions: the condition index order
    versions: dict[str, int | None]  # the input table versions every read uses (provenance.pin_inputs)
    config: dict[str, Any]  # provenance.config_record of this join


def check_config(cfg: Config) -> tuple[JoinSpec, int]:
    """(spec, lag) of ``cfg``; ValueError on an unknown or removed similarity or lag < 1."""
    if cfg.similarity in REMOVED_SIMILARITIES:
        raise ValueError(f"similarity {cfg.similarity!r} was removed; the join computes lum_match with "
                         f"{' or '.join(repr(s) for s in SIMILARITIES)} only")
    if cfg.similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {', '.join(SIMILARITIES)}, got {cfg.similarity!r}")
    spec = load_spec(cfg.spec)
    lag = spec.lag_days if cfg.lag_days is None else cfg.lag_days
    if lag < 1:
        raise ValueError(f"lag_days must be >= 1 (knowledge strictly before ds), got {lag}")
    return spec, lag


def output_metadata(spec: JoinSpec, conditions: list[str]) -> dict[str, str]:
    """Table metadata written with every dlrm_training commit (the lum_match order, the spec)."""
    return {dlrm_training.CONDITIONS_KEY: dlrm_training.encode_conditions(conditions),
            "lum.join_spec": spec.name}


def prepare(cfg: Config, spec: JoinSpec, lag: int, wh: Warehouse, versions: dict[str, int | None]) -> Prepared:
    """Start Spark, check the samples table schema, read items and resolve the condition order, all at the
    pinned ``versions``."""
    spark = get_spark()
    check_samples_schema(wh, spec, versions.get(spec.samples_table))
    items_table = read_items(wh, spec, versions.get("items"))
    conditions = resolve_conditions(spec, items_table)
    items = items_frame(spark, items_table, spec)
    config = provenance.config_record(spec, lag, require_knowledge=cfg.require_knowledge,
                                      broadcast_items=cfg.broadcast_items, similarity=cfg.similarity)
    return Prepared(spec=spec, lag=lag, wh=wh, spark=spark, items=items, conditions=conditions,
                    extended=extended_conditions(items_table, spec, conditions), versions=dict(versions),
                    config=config)


def commit_metadata(prep: Prepared, days: list[str], k_ds: str | None, fallback: str | None,
                    model_version: str | None) -> dict[str, str]:
    """The provenance record of the commit writing ``days`` (stages.join.provenance)."""
    return provenance.commit_metadata(days=days, versions=prep.versions, knowledge_ds=k_ds, fallback=fallback,
                                      model_version=model_version, config=prep.config)


@dataclass
class Joined:
    """The training rows of some sample days, ready to write: ``batches`` applied to each partition of ``rows``
    (both lazy: ``Warehouse.write_arrow_days`` computes them once, in its Python tasks) and ``check`` (pass it to
    the write: the knowledge the write joined and the rows per day are checked before the commit; then
    ``check.without``). ``rows`` are partitioned by user id, so each task holds every row of its keys (the
    write's ``keyed``). ``frame()`` is the same rows as a Spark DataFrame. ``release`` after the write."""

    rows: Any
    batches: Any
    check: OutputCheck
    model_version: str | None
    dim: int
    knowledge: Knowledge | None = None

    def frame(self) -> Any:
        from pyspark.sql import types as T  # deferred: the CLI/DAG import this module for Config without Spark

        if self.batches is None:
            return self.rows
        out = dlrm_training.spark_schema(self.dim)
        return self.rows.mapInArrow(self.batches, T.StructType([T.StructField(f.name, f.dataType, True) for f in out]))

    def release(self) -> None:
        if self.knowledge is not None:
            self.knowledge.release()


def join_days(cfg: Config, prep: Prepared, samples: Any, expected: dict[str, int], k_ds: str | None) -> Joined:
    """The training rows of ``samples`` (one or many days, ``expected`` rows each) with knowledge ``k_ds``.

    Nothing here computes the output: one small job checks the sample items' knowledge; the write's own job
    joins, observes the users it joined and writes (Python tasks); ``Joined.check`` then checks both.
    """
    knowledge = None
    if k_ds is not None:
        knowledge = read_knowledge(prep.spark, prep.wh, k_ds, samples, prep.extended, prep.versions,
                                   items_to_driver=cfg.broadcast_items)
    version, dim = (knowledge.model_version, knowledge.dim) if knowledge is not None else (None, 1)
    try:
        users = knowledge.users if knowledge is not None else None
        items_df = knowledge.items if knowledge is not None else None
        table = knowledge.item_table() if knowledge is not None and knowledge.item_rows is not None else None
        rows, batches = training_plan(samples, prep.items, users, items_df, spec=prep.spec, conditions=prep.conditions,
                                      extended=prep.extended, knowledge_ds=k_ds, model_version=version, dim=dim,
                                      broadcast_items=cfg.broadcast_items, item_table=table)
    except BaseException:
        if knowledge is not None:
            knowledge.release()
        raise
    check = OutputCheck(prep.spark, prep.spec, prep.wh.table_uri(prep.spec.output_table), expected,
                        before=knowledge.check_users if knowledge is not None else None)
    return Joined(rows=rows, batches=batches, check=check, model_version=version, dim=dim, knowledge=knowledge)


def run(cfg: Config, *, ds: str, warehouse: Warehouse | str) -> dict[str, Any]:
    """Write partition ``ds`` of the spec's output table; returns a JSON-able summary."""
    wh = Warehouse.of(warehouse)
    check_ds(ds)
    spec, lag = check_config(cfg)
    started = time.perf_counter()
    versions = provenance.pin_inputs(wh, spec)
    samples_version = versions[spec.samples_table]
    if samples_version is None or ds not in wh.partitions(spec.samples_table, samples_version):
        raise ValueError(f"{spec.samples_table} has no partition ds={ds}")
    cutoff = days_before(ds, lag)
    k_ds, fallback = resolve_knowledge(wh, ds, lag, allow_stale=cfg.allow_stale_knowledge, versions=versions)
    if k_ds is None and cfg.require_knowledge:
        raise ValueError(f"no user_knowledge/item_knowledge partition <= {cutoff} (ds {ds} - lag {lag}) "
                         "and require_knowledge is set")
    prep = prepare(cfg, spec, lag, wh, versions)
    samples = wh.read_spark(prep.spark, spec.samples_table, ds=ds, version=samples_version)
    n_samples = sample_rows_by_day(wh, spec, [ds], samples, samples_version)[ds]
    if k_ds is None:
        log.warning("no knowledge partition <= %s: writing %s[%s] with null LUM columns", cutoff,
                    spec.output_table, ds)
    joined = join_days(cfg, prep, samples, {ds: n_samples}, k_ds)
    version, dim = joined.model_version, joined.dim
    try:
        # No app_id: a rerun must replace the partition (its inputs may have changed); the overwrite of
        # partition ds makes a rerun with the same inputs give the same rows.
        written = wh.write_arrow_days(spec.output_table, joined.rows, joined.batches, days=[ds],
                                      metadata=output_metadata(spec, prep.conditions),
                                      commit_metadata=commit_metadata(prep, [ds], k_ds, fallback, version),
                                      check=joined.check, keyed=joined.batches is not None)
    finally:
        joined.release()
    without = joined.check.without
    seconds = time.perf_counter() - started
    summary = {
        "table": spec.output_table, "ds": ds, "rows": n_samples,
        "rows_without_knowledge": without[ds],
        "knowledge_ds": k_ds, "knowledge_lag_days": knowledge_lag(ds, k_ds), "model_version": version,
        "fallback": fallback, "dim": dim if k_ds else None,
        "conditions": len(prep.conditions), "spec": spec.name, "lag_days": lag,
        "inputs": versions, "config_hash": provenance.config_hash(prep.config),
        "version": written, "seconds": round(seconds, 3),
        "rows_per_s": round(n_samples / max(seconds, 1e-9), 1),
    }
    log.info("join %s: %d rows (%d without knowledge) from knowledge %s in %.1f s", ds, n_samples,
             summary["rows_without_knowledge"], k_ds, seconds)
    return summary
