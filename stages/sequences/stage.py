"""``lum run sequences --ds D``: per user, the last ``max_len`` behaviours with ts < end of day D.

A Spark job: events of ds <= D with ts < day_end(D), left-joined with items for the category, ranked per user
newest first by (ts, event_idx), cut to ``max_len`` and collected oldest first (the window sort dominates the
cost); one Delta commit replaces partition D (a rerun: the same rows). Incremental by default: D = D-1's rows
extended by day D's events when D-1's build record checks out (``stages.sequences.incremental``, the same rows),
else or with ``full_rebuild=true`` the full build, the reason logged and in the summary (``mode``, ``reason``).
An incremental day whose D-1 has one file per bucket is merged bucket by bucket in Python tasks: Spark shuffles
only the day's rows and task b streams D-1's file of bucket b beside them (``stages.sequences.merge``; summary
``path``: "per bucket"); otherwise (D-1 older than buckets or rewritten) Spark joins the two ("spark").
Each behaviour gets one condition string from ``condition_features`` in that order (``category=Comedy,liked=yes``;
an item missing from ``items`` gets ``category=<unk>``); ``liked`` is ``yes`` when the rating >=
``liked_threshold``, ``no`` below, ``<unk>`` without a rating (implicit feedback: logged, ``liked_unknown`` in the
summary). Features go to the table metadata (``lum.conditions``), the build record to the commit metadata. Users
with one behaviour are kept. Rows are written in ``buckets`` hash buckets (``bucket`` = stable hash of user_id %
buckets, one file per bucket, rows by user_id: ``stages.sequences.bucketing``; the count is in the build record),
so a worker reads only its buckets (``stages.warehouse.buckets``). No events up to D, an unknown feature or a
non-finite threshold: ``ValueError``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from stages.core.dates import check_ds, day_end
from stages.core.spark import get_spark
from stages.sequences import bucketing, incremental, merge
from stages.warehouse import buckets as bucket_files
from stages.warehouse.facade import Warehouse

log = logging.getLogger(__name__)

FEATURE_COLUMNS = {"category": "category", "scenario": "scenario", "liked": "rating"}  # feature -> source column
METADATA_KEY = "lum.conditions"
UNKNOWN = "<unk>"


@dataclass(frozen=True)
class Config:
    max_len: int = 256  # behaviours kept per user: >= pretrain max_len (200) + 2 leave-last-out holdouts
    condition_features: tuple[str, ...] = ("category",)  # condition token features, in string order
    full_rebuild: bool = False  # true: rebuild from all events <= ds even when partition ds-1 could be extended
    liked_threshold: float = 4.0  # feature "liked": yes when rating >= this (MovieLens' positive), no below
    buckets: int = 16  # hash buckets of user_id (a power of two), one file each; changing it needs full_rebuild

    def check(self) -> None:
        if self.max_len <= 0:
            raise ValueError(f"max_len must be > 0, got {self.max_len}")
        bad = [f for f in self.condition_features if f not in FEATURE_COLUMNS]
        if bad or not self.condition_features or len(set(self.condition_features)) != len(self.condition_features):
            raise ValueError(f"condition_features must be distinct names from {', '.join(FEATURE_COLUMNS)}, "
                             f"got {','.join(self.condition_features) or '(empty)'}")
        if not isinstance(self.liked_threshold, (int, float)) or not math.isfinite(self.liked_threshold):
            raise ValueError(f"liked_threshold must be a finite number, got {self.liked_threshold!r}")
        bucketing.check_buckets(self.buckets)

    def threshold(self) -> float | None:
        """The liked threshold when ``liked`` is a condition feature (part of the build record), else None."""
        return float(self.liked_threshold) if "liked" in self.condition_features else None


def feature_value(feature: str, liked_threshold: float):
    """The Spark column of one behaviour's ``feature`` value (``<unk>`` when the source column is null)."""
    # deferred: pyspark loads the JVM bridge; importing the stage (configs, registry) must not
    from pyspark.sql import functions as F

    source = F.col(FEATURE_COLUMNS[feature])
    if feature == "liked":  # a null or NaN rating is implicit feedback: no opinion either way
        return (F.when(source.isNull() | F.isnan(source), F.lit(UNKNOWN))
                .when(source >= F.lit(float(liked_threshold)), F.lit("yes")).otherwise(F.lit("no")))
    return F.coalesce(source.cast("string"), F.lit(UNKNOWN))


def build_sequences(events_df, items_df, *, ds: str, cfg: Config):
    """The Spark DataFrame of user_sequences rows for day ``ds`` (without writing it)."""
    # deferred: pyspark loads the JVM bridge; importing the stage (configs, registry) must not
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    ev = events_df.where(F.col("ts") < F.lit(day_end(ds)))
    items = items_df.select("item_id", F.col("category").alias("category"))
    joined = ev.join(F.broadcast(items), on="item_id", how="left")
    parts = [F.concat(F.lit(f"{f}="), feature_value(f, cfg.liked_threshold)) for f in cfg.condition_features]
    joined = joined.withColumn("condition", F.concat_ws(",", *parts))
    newest_first = Window.partitionBy("user_id").orderBy(F.col("ts").desc(), F.col("event_idx").desc())
    per_user = Window.partitionBy("user_id")
    ranked = (joined.withColumn("rn", F.row_number().over(newest_first))
              .withColumn("total_events", F.count(F.lit(1)).over(per_user))
              .where(F.col("rn") <= cfg.max_len))
    grouped = ranked.groupBy("user_id").agg(
        F.sort_array(F.collect_list(F.struct("ts", "event_idx", "item_id", "condition", "rating"))).alias("b"),
        F.first("total_events").alias("total_events"))
    return grouped.select(
        F.lit(ds).alias("ds"), "user_id",
        F.col("b.item_id").alias("item_ids"), F.col("b.condition").alias("conditions"),
        F.col("b.ts").alias("ts"), F.col("b.rating").alias("ratings"),
        F.size("b").cast("int").alias("history_len"), F.col("total_events").cast("long").alias("total_events"))


def _write_spark(wh: Warehouse, df, *, ds: str, cfg: Config, record) -> tuple[int, int, int]:
    """Spark writes ``df`` (every row of partition ``ds``) in buckets; (version, rows, liked=<unk> behaviours)."""
    # counted, then written: kept on disk in between. An in-memory cache (``cache()``) of a 3M-user day filled
    # the 4g heap beside the write's sort and ran out of it; on disk the heap holds pages of the tasks only.
    from pyspark import StorageLevel  # deferred: as in build_sequences

    conditions = ",".join(cfg.condition_features)
    df = bucketing.with_bucket(df, cfg.buckets).persist(StorageLevel.DISK_ONLY)
    try:
        rows, unknown, unrated = incremental.count_rows(df, conditions)
        if rows == 0:
            raise ValueError(f"events has no behaviour with ts before the end of {ds}")
        version = wh.write_spark_partition("user_sequences", bucketing.bucketed(df, cfg.buckets), ds=ds,
                                           metadata={METADATA_KEY: conditions, **record(rows, unknown)},
                                           check=bucketing.one_bucket_per_file)
    finally:
        df.unpersist()
    return version, rows, unrated


def _write_merged(wh: Warehouse, day, previous, *, ds: str, cfg: Config, record) -> tuple[int, int, int]:
    """Python tasks write partition ``ds`` bucket by bucket: D-1's file of bucket b (``previous``) merged with
    ``day``'s rows of bucket b (``stages.sequences.merge``); (version, rows, liked=<unk> behaviours)."""
    from pyspark.sql import functions as F  # deferred: as in build_sequences

    conditions = ",".join(cfg.condition_features)
    day = bucketing.with_bucket(day, cfg.buckets).withColumn(merge.MARKER, F.lit(False))
    rows = bucketing.bucketed(day.unionByName(merge.markers(day.sparkSession, cfg.buckets, ds, day)), cfg.buckets)
    counts: dict[str, int] = {}

    def finish(sums: dict[str, int]) -> dict[str, str]:
        counts.update(sums)
        return {METADATA_KEY: conditions, **record(sums["rows"], sums.get("unknown", 0))}

    version = wh.write_arrow_days(
        "user_sequences", rows, merge.bucket_writer(wh, previous, ds=ds, max_len=cfg.max_len, buckets=cfg.buckets),
        days=[ds], check=merge.covers(previous), keyed=True, tally=merge.tally(conditions), finish=finish)
    return version, counts["rows"], counts.get("unrated", 0)


def run(cfg: Config, *, ds: str, warehouse: Warehouse | str | None) -> dict:
    """Write partition ``ds`` of user_sequences; returns {"table", "ds", "rows", "version", "mode", "reason",
    "buckets", "path", "seconds"} (mode: "incremental" or "full"; path: "per bucket" or "spark"), and
    "liked_unknown" (behaviours without a rating) with "liked"."""
    check_ds(ds)
    cfg.check()
    started = time.perf_counter()
    wh = Warehouse.of(warehouse)
    for name in ("events", "items"):
        if not wh.exists(name):
            raise ValueError(f"table {name} does not exist in {wh.uri}; run `lum ingest` first")
    if not any(p <= ds for p in wh.partitions("events")):
        raise ValueError(f"events has no partition with ds <= {ds}; nothing to build sequences from")
    conditions = ",".join(cfg.condition_features)
    events_version, items_version = wh.version("events"), wh.version("items")  # one snapshot for the whole build
    prev, reason = (None, "full_rebuild=true") if cfg.full_rebuild else incremental.plan(
        wh, ds=ds, max_len=cfg.max_len, conditions=conditions, events_version=events_version,
        items_version=items_version, liked_threshold=cfg.threshold(), buckets=cfg.buckets)
    mode = "full" if prev is None else "incremental"
    log.info("user_sequences ds=%s: %s build (%s)", ds, mode, reason)
    spark = get_spark()
    # items is small and unpartitioned (read_spark serves ds tables): read with delta-rs, hand to Spark
    items_pd = wh.read("items", columns=["item_id", "category"], version=items_version).to_pandas()
    items = spark.createDataFrame(items_pd, "item_id long, category string")
    fingerprint = incremental.events_fingerprint(wh, events_version, ds)

    def record(rows: int, unknown: int) -> dict[str, str]:
        return incremental.build_record(
            ds=ds, max_len=cfg.max_len, conditions=conditions, rows=rows, unknown_users=unknown, mode=mode,
            events_fingerprint=fingerprint, items_version=items_version, liked_threshold=cfg.threshold(),
            buckets=cfg.buckets)

    if prev is None:
        df = build_sequences(wh.read_spark(spark, "events", end=ds, version=events_version), items, ds=ds, cfg=cfg)
        version, rows, unrated = _write_spark(wh, df, ds=ds, cfg=cfg, record=record)
        path = "spark"
    else:
        day = build_sequences(wh.read_spark(spark, "events", ds=ds, version=events_version), items, ds=ds, cfg=cfg)
        previous = bucket_files.layout(wh, prev)
        why = previous.unusable(cfg.buckets)
        if why is None:
            version, rows, unrated = _write_merged(wh, day, previous, ds=ds, cfg=cfg, record=record)
            path = "per bucket"
        else:
            log.info("user_sequences ds=%s: extending %s in Spark: %s", ds, prev, why)
            df = incremental.extend(wh.read_spark(spark, "user_sequences", ds=prev), day, ds=ds,
                                    max_len=cfg.max_len)
            version, rows, unrated = _write_spark(wh, df, ds=ds, cfg=cfg, record=record)
            path = "spark"
    seconds = round(time.perf_counter() - started, 2)
    log.info("user_sequences ds=%s: %d users (%s) in %.1fs", ds, rows, mode, seconds)
    summary = {"table": "user_sequences", "ds": ds, "rows": rows, "version": version, "mode": mode,
               "reason": reason, "buckets": cfg.buckets, "path": path, "seconds": seconds}
    if cfg.threshold() is not None:
        summary["liked_unknown"] = unrated
        if unrated:
            log.warning("user_sequences ds=%s: %d behaviour(s) have no rating: condition liked=%s", ds, unrated,
                        UNKNOWN)
    return summary
