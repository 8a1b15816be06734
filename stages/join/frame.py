"""The Spark plan of the join: samples + LUM columns as one lazy dlrm_training DataFrame.

    samples
      LEFT JOIN items (broadcast)           on item_id  -> index of the target condition
      LEFT JOIN user_vectors (shuffle)      on user_id  -> list<struct<i: condition index, e: o_q>>
      LEFT JOIN item_knowledge              on item_id  -> e_i (broadcast unless disabled)
      mapInArrow: stages.join.similarity.lum_columns per Arrow batch

Condition indexes run over the configured conditions (the ``lum_match`` order) then any item target
condition not configured, so ``lum_user`` / ``lum_target_match`` work for every item. A knowledge condition
with ``liked`` takes the index of the condition without it: ``liked=yes`` that index k, ``liked=no`` k + n_ext
(``lum_target_match_disliked``), other values none. ``user_vectors`` groups each user's vectors once
(stages.join.inputs feeds it the samples' users only and caches it for the checks); no per-row Spark lambdas,
no per-condition explode.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from schemas import dlrm_training
from stages.join.similarity import lum_columns
from stages.join.spec import FEEDBACK, JoinSpec

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
    stages.join.checks.check_knowledge reads."""
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


def build_training_frame(samples: Any, items: Any, users: Any | None, ik: Any | None, *, spec: JoinSpec,
                         conditions: list[str], extended: list[str], knowledge_ds: str | None,
                         model_version: str | None, dim: int, broadcast_items: bool = True) -> Any:
    """The dlrm_training DataFrame of ``samples`` (one or many days, lazy); ``users``/``ik`` None: null LUM columns.

    ``items`` is (item_id, <spec.target_feature>); ``users`` is ``user_vectors`` of the checked knowledge partition
    ``knowledge_ds`` over ``extended`` (``extended_conditions``), ``ik`` its item_knowledge, both of width ``dim``.
    Output columns and types are ``dlrm_training.spark_schema(dim)``.
    """
    from pyspark.sql import functions as F  # deferred: stage.py is imported for its Config without Spark
    from pyspark.sql import types as T

    out_schema = dlrm_training.spark_schema(dim)
    sample_cols = [f.name for f in out_schema.fields if not f.name.startswith("lum_")]
    if users is None or ik is None:
        lum = [F.lit(None).cast(out_schema[c].dataType).alias(c) for c in LUM_COLUMNS]
        return samples.select(*sample_cols, *lum)

    prefix = spec.target_condition_prefix()
    cond_df = _condition_frame(samples.sparkSession, extended)
    target = F.broadcast(items.join(cond_df, F.concat(F.lit(prefix), F.col(spec.target_feature)) == cond_df["_cond"],
                                    "left")
                         .select(F.col("item_id").alias("_iid"), F.col("_cidx").alias("_tidx")))
    item_vecs = ik.select(F.col("item_id").alias("_kid"), F.col("embedding").alias("_ie"))
    if broadcast_items:
        item_vecs = F.broadcast(item_vecs)
    base = samples.select(*[F.col(c).cast(out_schema[c].dataType).alias(c) for c in sample_cols])
    joined = (base
              .join(target, base["item_id"] == target["_iid"], "left")
              .join(users, base["user_id"] == users["_uid"], "left")
              .join(item_vecs, base["item_id"] == item_vecs["_kid"], "left")
              .select(*sample_cols, "_tidx", "_ulist", "_ie"))
    result_schema = T.StructType([T.StructField(f.name, f.dataType, True) for f in out_schema.fields])
    n_cond, n_ext, wanted = len(conditions), len(extended), frozenset(spec.features)
    k_ds, version = str(knowledge_ds), str(model_version)
    names = [f.name for f in out_schema.fields]

    def per_batch(batches: Any) -> Any:
        for batch in batches:
            lum = lum_columns(batch.column("_ulist"), batch.column("_tidx"), batch.column("_ie"), n_cond=n_cond,
                              n_ext=n_ext, dim=dim, knowledge_ds=k_ds, model_version=version, wanted=wanted)
            cols = [batch.column(c) for c in sample_cols] + [lum[name] for name in names[len(sample_cols):]]
            yield pa.RecordBatch.from_arrays(cols, names=names)

    return joined.mapInArrow(per_batch, result_schema)
