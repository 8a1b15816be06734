"""The Spark plan of the join: samples + LUM columns as lazy rows and the Python function that finishes them.

    samples
      LEFT JOIN items (broadcast)           on item_id  -> index of the target condition
      (LEFT JOIN item_knowledge             on item_id  -> e_i, only when not broadcast to Python)
      repartition by user id
      UNION user_vectors                    one row per user: list<struct<i: condition index, e: o_q>>
      sort by (user id, user row first)
      per partition in Python: stages.join.merge (the user join, then stages.join.similarity per batch)

``user_vectors`` comes out of its group-by already hash-partitioned by user id into ``spark.sql.shuffle.partitions``
partitions, so only the samples are repartitioned: Spark's partitioning-aware union (``spark.sql.
unionOutputPartitioning``, on by default) puts partition i of both sides in task i, and the knowledge goes
through one shuffle, not two. When the plan says otherwise (that setting off, another partition count), the
union is repartitioned as a whole, as before; ``merge_partition`` fails the job should a user's vectors ever
reach a task without the user's samples.

The user join happens in Python so that each user's vectors cross into Python once, not once per sample;
broadcast item vectors go to Python with the task and are looked up there. Condition indexes run over the
configured conditions (the ``lum_match`` order) then any item target condition not configured, so
``lum_user`` / ``lum_target_match`` work for every item. A knowledge condition with ``liked`` takes the index of
the condition without it: ``liked=yes`` that index k, ``liked=no`` k + n_ext (``lum_target_match_disliked``),
other values none. ``user_vectors`` groups each user's vectors once
(stages.join.inputs feeds it the samples' users only and observes its check columns); no per-row Spark
lambdas, no per-condition explode.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from schemas import dlrm_training
from stages.core.conditions import FEEDBACK
from stages.join.merge import merge_partition
from stages.join.spec import JoinSpec

LUM_COLUMNS = ("lum_match", "lum_target_match", "lum_user", "lum_item", "lum_knowledge_ds", "lum_model_version",
               "lum_target_match_disliked")


def extended_conditions(items: pa.Table, spec: JoinSpec, conditions: list[str]) -> list[str]:
    """The condition index order: ``conditions`` (the lum_match order), then every other item target condition,
    sorted (from the Arrow items table: no Spark job)."""
    prefix = spec.target_condition_prefix()
    targets = {prefix + str(v) for v in items.column(spec.target_feature).to_pylist() if v is not None}
    return list(conditions) + sorted(targets - set(conditions))


def _condition_frame(spark: Any, extended: list[str]) -> Any:
    from pyspark.sql import functions as F  # deferred: stage.py is imported for its Config without Spark

    return F.broadcast(spark.createDataFrame([(c, i) for i, c in enumerate(extended)], "_cond string, _cidx int"))


def user_vectors(uk: Any, extended: list[str]) -> Any:
    """One row per user of ``uk`` (lazy): ``_uid``, ``_ulist`` list<struct<i: condition index, e: o_q>> over the
    conditions of ``extended`` (a ``liked=no`` condition: its index + len(extended)), and the check columns
    ``_rows``, ``_keys`` (distinct indexes), ``_versions``, ``_lo`` / ``_hi`` (embedding widths) that
    stages.join.checks.user_metrics aggregates."""
    from pyspark.sql import functions as F  # deferred: stage.py is imported for its Config without Spark

    cond_df = _condition_frame(uk.sparkSession, extended)
    width = F.size("embedding")
    liked = F.regexp_extract("condition", f"(?:^|,){FEEDBACK}=([^,]*)", 1)  # "" when the condition has none
    keyed = (uk.where(liked.isin("", "yes", "no"))
             .withColumn("_base", F.regexp_replace("condition", f"^{FEEDBACK}=[^,]*,|,{FEEDBACK}=[^,]*", ""))
             .withColumn("_off", F.when(liked == "no", F.lit(len(extended))).otherwise(F.lit(0))))
    return (keyed.join(cond_df, keyed["_base"] == cond_df["_cond"], "inner")
            .withColumn("_cidx", F.col("_cidx") + F.col("_off"))
            .groupBy(F.col("user_id").alias("_uid"))
            .agg(F.collect_list(F.struct(F.col("_cidx").alias("i"), F.col("embedding").alias("e"))).alias("_ulist"),
                 F.count(F.lit(1)).alias("_rows"), F.size(F.collect_set("_cidx")).alias("_keys"),
                 F.collect_set("model_version").alias("_versions"), F.min(width).alias("_lo"),
                 F.max(width).alias("_hi")))


def physical_plan(df: Any) -> Any:
    """The JVM physical plan Spark starts ``df`` with (adaptive execution's initial plan), before any job."""
    plan = df._jdf.queryExecution().executedPlan()
    return plan.initialPlan() if plan.getClass().getSimpleName() == "AdaptiveSparkPlanExec" else plan


def hash_partitioned(df: Any, parts: int) -> bool:
    """Whether Spark plans ``df`` hash-partitioned into ``parts`` partitions (``physical_plan``); False when the
    plan cannot be read (no JVM plan, as with Spark Connect)."""
    try:
        partitioning = physical_plan(df).outputPartitioning()
        return partitioning.toString().startswith("hashpartitioning(") and partitioning.numPartitions() == parts
    except Exception:  # noqa: BLE001 - any failure to read the plan means: take the path that needs no plan
        return False


def training_plan(samples: Any, items: Any, users: Any | None, ik: Any | None, *, spec: JoinSpec,
                  conditions: list[str], extended: list[str], knowledge_ds: str | None,
                  model_version: str | None, dim: int, broadcast_items: bool = True,
                  item_table: tuple[Any, Any] | None = None) -> tuple[Any, Any]:
    """(rows, batch function): the dlrm_training rows of ``samples`` (one or many days) are ``batch function``
    applied to each partition of ``rows`` (lazy); ``users``/``ik`` None: ``rows`` are the output itself (null LUM
    columns) and the function is None. ``ik`` is joined in Spark only without ``item_table``.

    ``items`` is (item_id, <spec.target_feature>); ``users`` is ``user_vectors`` of knowledge partition
    ``knowledge_ds`` over ``extended`` (``extended_conditions``), ``ik`` its item_knowledge, both of width ``dim``.
    Output columns and types are ``dlrm_training.spark_schema(dim)``; rows come in user id order per partition
    (``spark.sql.shuffle.partitions`` of them). ``item_table``: ``ik``'s vectors in Python (``stages.join.merge.
    item_lookup``'s table, sent with the task), looked up there instead of joined in Spark.
    """
    from pyspark.sql import functions as F  # deferred: stage.py is imported for its Config without Spark

    out_schema = dlrm_training.spark_schema(dim)
    sample_cols = [f.name for f in out_schema.fields if not f.name.startswith("lum_")]
    if users is None:
        lum = [F.lit(None).cast(out_schema[c].dataType).alias(c) for c in LUM_COLUMNS]
        return samples.select(*[F.col(c).cast(out_schema[c].dataType) for c in sample_cols], *lum), None

    prefix = spec.target_condition_prefix()
    cond_df = _condition_frame(samples.sparkSession, extended)
    target = F.broadcast(items.join(cond_df, F.concat(F.lit(prefix), F.col(spec.target_feature)) == cond_df["_cond"],
                                    "left")
                         .select(F.col("item_id").alias("_iid"), F.col("_cidx").alias("_tidx")))
    ulist_type = users.schema["_ulist"].dataType
    base = samples.select(*[F.col(c).cast(out_schema[c].dataType).alias(c) for c in sample_cols])
    sample_rows = base.join(target, base["item_id"] == target["_iid"], "left")
    extra = []  # the item vectors travel with each sample row only without item_table
    if item_table is None:
        item_vecs = ik.select(F.col("item_id").alias("_kid"), F.col("embedding").alias("_ie"))
        item_vecs = F.broadcast(item_vecs) if broadcast_items else item_vecs
        sample_rows = sample_rows.join(item_vecs, base["item_id"] == item_vecs["_kid"], "left")
        extra = ["_ie"]
    sample_rows = sample_rows.select(*sample_cols, "_tidx", *extra, F.col("user_id").alias("_key"),
                                     F.lit(1).alias("_tag"), F.lit(None).cast(ulist_type).alias("_ulist"))
    user_rows = users.select(*[F.lit(None).cast(out_schema[c].dataType).alias(c) for c in sample_cols],
                             F.lit(None).cast("int").alias("_tidx"),
                             *[F.lit(None).cast(sample_rows.schema[c].dataType).alias(c) for c in extra],
                             F.col("_uid").alias("_key"), F.lit(0).alias("_tag"), "_ulist")
    parts = int(samples.sparkSession.conf.get("spark.sql.shuffle.partitions"))
    merged = sample_rows.repartition(parts, "_key").unionByName(user_rows)
    if not hash_partitioned(merged, parts):  # the union would concatenate: shuffle the users' rows again
        merged = sample_rows.unionByName(user_rows).repartition(parts, "_key")
    merged = merged.sortWithinPartitions("_key", "_tag")
    options = {"sample_cols": sample_cols, "names": [f.name for f in out_schema.fields], "n_cond": len(conditions),
               "n_ext": len(extended), "dim": dim, "knowledge_ds": str(knowledge_ds),
               "model_version": str(model_version), "wanted": frozenset(spec.features), "items": item_table}

    def per_partition(batches: Any) -> Any:
        return merge_partition(batches, **options)

    return merged, per_partition
