"""The join's OLD path, kept only as ``lum bench join``'s baseline: every global step the join has since dropped.

Reconstructed from the join before the semi-join rewrite (``git show cb7a68f^:stages/join/``), with the same
numpy LUM columns (``stages.join.similarity.lum_columns``) and its own copy of the old plan: items go to Spark
through pandas on the driver; the extended condition order is collected by a Spark job over items; the
knowledge check is one job over BOTH whole partitions (``countDistinct`` of (user_id, condition) and of
item_id, no cache, so the join reads them again); every user of user_knowledge is grouped, sample or not, and
each sample row carries its user's whole vector list into Python; the output is cached on disk and checked by
its own job (``check_days``: a ``countDistinct`` of the output key) before the write reads the cache. Writes
partition ``ds`` of the spec's output table through the same warehouse bridge as the stage. Bench only.
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa

from schemas import dlrm_training
from stages.core.spark import get_spark
from stages.join.checks import check_samples_schema
from stages.join.inputs import read_items, resolve_conditions, sample_rows_by_day
from stages.join.similarity import lum_columns
from stages.join.spec import DEFAULT_SPEC, JoinSpec
from stages.join.stage import output_metadata
from stages.warehouse.facade import Warehouse


def _items_via_pandas(spark: Any, wh: Warehouse, spec: JoinSpec) -> tuple[Any, list[str]]:
    """(broadcast items DataFrame built from a pandas frame on the driver, lum_match conditions)."""
    from pyspark.sql import functions as F  # deferred: pyspark is only needed when the bench runs

    table = read_items(wh, spec)
    items = F.broadcast(spark.createDataFrame(table.to_pandas(), f"item_id long, {spec.target_feature} string"))
    return items, resolve_conditions(spec, table)


def _extended(items: Any, spec: JoinSpec, conditions: list[str]) -> list[str]:
    """The condition index order, collected by a Spark job over items (as the old frame did)."""
    from pyspark.sql import functions as F  # deferred: pyspark is only needed when the bench runs

    prefix = spec.target_condition_prefix()
    targets = [r[0] for r in items.select(F.concat(F.lit(prefix), F.col(spec.target_feature)))
               .where(F.col(spec.target_feature).isNotNull()).distinct().collect()]
    return list(conditions) + sorted(set(targets) - set(conditions))


def check_whole_knowledge(uk: Any, ik: Any, k_ds: str) -> tuple[str, int]:
    """(model_version, dim) of the WHOLE knowledge partitions: one job with ``countDistinct`` over each table."""
    from pyspark.sql import functions as F  # deferred: pyspark is only needed when the bench runs

    def stats_of(name: str, df: Any, key: list[str]) -> Any:
        return df.agg(F.lit(name).alias("table"), F.collect_set("model_version").alias("versions"),
                      F.min(F.size("embedding")).alias("lo"), F.max(F.size("embedding")).alias("hi"),
                      F.count(F.lit(1)).alias("rows"), F.countDistinct(*key).alias("keys"))

    rows = stats_of("user_knowledge", uk, ["user_id", "condition"]).union(
        stats_of("item_knowledge", ik, ["item_id"])).collect()
    stats = {}
    for row in rows:
        versions = sorted(row["versions"] or [])
        if len(versions) != 1 or row["lo"] != row["hi"] or row["rows"] != row["keys"]:
            raise ValueError(f"{row['table']}[{k_ds}]: versions {versions}, widths {row['lo']}..{row['hi']}, "
                             f"{row['rows'] - row['keys']} duplicated key(s)")
        stats[row["table"]] = (versions[0], int(row["lo"]))
    if stats["user_knowledge"] != stats["item_knowledge"]:
        raise ValueError(f"knowledge partition {k_ds}: {stats}")
    return stats["user_knowledge"]


def _all_user_vectors(uk: Any, extended: list[str]) -> Any:
    """One row per user of the WHOLE partition: ``_uid``, ``_ulist`` (the old group-by, no semi-join)."""
    from pyspark.sql import functions as F  # deferred: pyspark is only needed when the bench runs

    cond_df = F.broadcast(uk.sparkSession.createDataFrame([(c, i) for i, c in enumerate(extended)],
                                                          "_cond string, _cidx int"))
    return (uk.join(cond_df, uk["condition"] == cond_df["_cond"], "inner")
            .groupBy(F.col("user_id").alias("_uid"))
            .agg(F.collect_list(F.struct(F.col("_cidx").alias("i"), F.col("embedding").alias("e"))).alias("_ulist")))


def check_days(out: Any, spec: JoinSpec, expected: dict[str, int]) -> dict[str, int]:
    """The old output check, ONE Spark job over the cached output: per ds, rows == ``expected[ds]``, keys
    non-null and unique (``countDistinct``); returns rows without knowledge per day."""
    from pyspark.sql import functions as F  # deferred: pyspark is only needed when the bench runs

    key = list(dlrm_training.KEY)
    aggs = [F.count(F.lit(1)).alias("rows"), F.countDistinct(*key).alias("keys"),
            F.sum(F.col("lum_knowledge_ds").isNull().cast("long")).alias("without")]
    aggs += [F.sum(F.col(k).isNull().cast("long")).alias(f"null_{k}") for k in key]
    found = {row["ds"]: row for row in out.groupBy("ds").agg(*aggs).collect()}
    without = {}
    for ds, n_samples in sorted(expected.items()):
        row = found.get(ds)
        if row is None or row["rows"] != n_samples or row["keys"] != row["rows"] or any(row[f"null_{k}"] for k in key):
            raise ValueError(f"{spec.samples_table}[{ds}]: join output check failed: {row}")
        without[ds] = int(row["without"] or 0)
    return without


def old_training_frame(samples: Any, items: Any, user_rows: Any, ik: Any, *, spec: JoinSpec, conditions: list[str],
                       extended: list[str], knowledge_ds: str, model_version: str, dim: int) -> Any:
    """The old plan: samples LEFT JOIN items (broadcast), the grouped user rows (shuffle: each sample row then
    carries its user's whole vector list into Python), item_knowledge (broadcast); numpy LUM columns per batch."""
    from pyspark.sql import functions as F  # deferred: pyspark is only needed when the bench runs
    from pyspark.sql import types as T

    out_schema = dlrm_training.spark_schema(dim)
    sample_cols = [f.name for f in out_schema.fields if not f.name.startswith("lum_")]
    prefix = spec.target_condition_prefix()
    cond_df = F.broadcast(samples.sparkSession.createDataFrame([(c, i) for i, c in enumerate(extended)],
                                                               "_cond string, _cidx int"))
    target = F.broadcast(items.join(cond_df, F.concat(F.lit(prefix), F.col(spec.target_feature)) == cond_df["_cond"],
                                    "left").select(F.col("item_id").alias("_iid"), F.col("_cidx").alias("_tidx")))
    item_vecs = F.broadcast(ik.select(F.col("item_id").alias("_kid"), F.col("embedding").alias("_ie")))
    base = samples.select(*[F.col(c).cast(out_schema[c].dataType).alias(c) for c in sample_cols])
    joined = (base.join(target, base["item_id"] == target["_iid"], "left")
              .join(user_rows, base["user_id"] == user_rows["_uid"], "left")
              .join(item_vecs, base["item_id"] == item_vecs["_kid"], "left")
              .select(*sample_cols, "_tidx", "_ulist", "_ie"))
    names = [f.name for f in out_schema.fields]
    n_cond, n_ext, wanted = len(conditions), len(extended), frozenset(spec.features)

    def per_batch(batches: Any) -> Any:
        for batch in batches:
            lum = lum_columns(batch.column("_ulist"), batch.column("_tidx"), batch.column("_ie"), n_cond=n_cond,
                              n_ext=n_ext, dim=dim, knowledge_ds=knowledge_ds, model_version=model_version,
                              wanted=wanted)
            cols = [batch.column(c) for c in sample_cols] + [lum[name] for name in names[len(sample_cols):]]
            yield pa.RecordBatch.from_arrays(cols, names=names)

    return joined.mapInArrow(per_batch, T.StructType([T.StructField(n, out_schema[n].dataType, True) for n in names]))


def run_baseline(wh: Warehouse, *, ds: str, k_ds: str, spec: JoinSpec = DEFAULT_SPEC) -> dict[str, Any]:
    """Join day ``ds`` with knowledge partition ``k_ds`` the old way and write it; returns rows, rows without
    knowledge, the written version and seconds."""
    from pyspark import StorageLevel  # deferred: pyspark is only needed when the bench runs

    started = time.perf_counter()
    spark = get_spark()
    check_samples_schema(wh, spec)
    items, conditions = _items_via_pandas(spark, wh, spec)
    samples = wh.read_spark(spark, spec.samples_table, ds=ds)
    n_samples = sample_rows_by_day(wh, spec, [ds], samples)[ds]
    uk = wh.read_spark(spark, "user_knowledge", ds=k_ds)
    ik = wh.read_spark(spark, "item_knowledge", ds=k_ds)
    version, dim = check_whole_knowledge(uk, ik, k_ds)
    extended = _extended(items, spec, conditions)
    out = old_training_frame(samples, items, _all_user_vectors(uk, extended), ik, spec=spec, conditions=conditions,
                             extended=extended, knowledge_ds=k_ds, model_version=version,
                             dim=dim).persist(StorageLevel.DISK_ONLY)
    try:
        without = check_days(out, spec, {ds: n_samples})[ds]
        written = wh.write_spark_partition(spec.output_table, out, ds=ds, metadata=output_metadata(spec, conditions))
    finally:
        out.unpersist()
    return {"rows": n_samples, "rows_without_knowledge": without, "version": written,
            "seconds": time.perf_counter() - started}
