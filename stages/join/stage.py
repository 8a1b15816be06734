"""Stage ``join``: the point-in-time join of day D's samples with the LUM knowledge (LUM step 3).

``run(cfg, ds=D)`` is one Spark job:

    dlrm_samples[ds = D]
      LEFT JOIN items                       on item_id  (target condition "category=<item category>")
      LEFT JOIN user knowledge, per user    on user_id  (one row per user: its vectors in a fixed order)
      LEFT JOIN item_knowledge              on item_id
    -> dlrm_training[ds = D]                (one delta-rs commit through Warehouse.write_spark_partition)

Point in time: the knowledge partition K used is the newest ds with K <= D - lag_days (lag_days >= 1,
default 1 = yesterday's inference); it is recorded per row in ``lum_knowledge_ds``. Nothing of day D or
later is read: not knowledge, not items' knowledge, not events (the samples of D are the labels).

Columns (see schemas/dlrm_training.py): ``lum_user`` = o_q under the target item's own condition,
``lum_item`` = e_i, ``lum_match[j]`` = sim(o_q, e_i) under the j-th configured condition (order stored
as JSON in the table metadata key ``lum.conditions``; null where the user has no knowledge under that
condition), ``lum_target_match`` = sim under the target's own condition. sim is the cosine similarity
dot(u, e) / (|u| |e|), 0.0 when either vector is all zeros. Norms are computed once per (user,
condition) and per item. ``similarity="numpy"`` (default) groups user_knowledge once into one row per
user (list of (condition index, vector)), shuffle-joins it to the samples, broadcasts items and
item_knowledge, and computes all LUM columns per Arrow batch with numpy (join_similarity.lum_columns).
``"sql"`` (Spark array lambdas per row) and ``"arrow"`` (einsum UDF) are the older paths, kept and tested.

Throughput (``lum bench join``, local[2] on 2 shared cores, load 5-7): see stages/bench/join.py.
Many days: ``stages.join.range.run_range`` reuses ``prepare`` / ``join_days`` / ``check_days`` below
for one Spark job and one commit per group of days sharing a knowledge partition (same rows per day).

Fallbacks and errors (``dlrm_training`` is untouched by every error):
- no knowledge partition <= D - lag (the first day of a backfill): rows are written with null LUM
  columns and the summary says ``knowledge_ds: null, fallback: "no_knowledge"``; with
  ``require_knowledge=true`` this is a ``ValueError`` instead.
- user_knowledge and item_knowledge have different newest partitions: the newest day that both have is
  used (logged, ``fallback: "common_partition"``); none in common is treated as no knowledge.
- different model versions (or several in one partition) or different embedding widths between the two
  knowledge partitions: ``ValueError`` naming both.
- a samples partition missing a column, with a wrong type, null keys or duplicate keys: ``ValueError``.
Samples whose user or item has no knowledge keep their row with null LUM columns (``rows_without_knowledge``).
Row count and key uniqueness are asserted (output rows == sample rows, keys unique) before the commit.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import schemas
from schemas import dlrm_training
from stages.core.dates import check_ds, days_before
from stages.join.spec import JoinSpec, load_spec

log = logging.getLogger(__name__)

SIMILARITIES = ("numpy", "sql", "arrow")  # the lum_match implementations (Config.similarity)


@dataclass(frozen=True)
class Config:
    """Options of ``lum run join`` (the consumer itself is described by its spec)."""

    spec: str = "dlrm"  # built-in spec name or path to a TOML/JSON spec (stages/join/spec.py)
    lag_days: int | None = None  # overrides the spec's lag; None = the spec's (default 1)
    require_knowledge: bool = False  # True: no knowledge partition is an error instead of null LUM columns
    broadcast_items: bool = True  # item_knowledge to every task (1M items x D=64 is 256 MB); False: shuffle join
    # "numpy" (default): one narrow list row per user, joined once, all LUM columns from one mapInArrow
    # numpy pass (no lambdas). "sql": Spark array lambdas per row; "arrow": lambdas + einsum UDF. Kept
    # as references (tested equal). The cost at 200k rows is fixed overhead (jobs, stats, write), not math.
    similarity: str = "numpy"


def knowledge_days(wh: Any) -> tuple[list[str], list[str]]:
    """(user_knowledge days, item_knowledge days), sorted; [] for a missing table."""
    def days(name: str) -> list[str]:
        return wh.partitions(name) if wh.exists(name) else []

    return days("user_knowledge"), days("item_knowledge")


def pick_knowledge_ds(user_days: list[str], item_days: list[str],
                      cutoff: str) -> tuple[str | None, str | None]:
    """(knowledge ds, fallback) for the newest user+item knowledge partition <= ``cutoff`` (pure).

    fallback is None (both tables' newest partitions agree), ``"common_partition"`` (they differ: the
    newest day both have) or ``"no_knowledge"`` (nothing usable).
    """
    users = [d for d in user_days if d <= cutoff]
    items = [d for d in item_days if d <= cutoff]
    if not users or not items:
        return None, "no_knowledge"
    if users[-1] == items[-1]:
        return users[-1], None
    common = sorted(set(users) & set(items))
    if not common:
        return None, "no_knowledge"
    return common[-1], "common_partition"


def choose_knowledge_ds(wh: Any, cutoff: str) -> tuple[str | None, str | None]:
    """``pick_knowledge_ds`` on the warehouse's knowledge partitions; logs the common-partition fallback."""
    user_days, item_days = knowledge_days(wh)
    k_ds, fallback = pick_knowledge_ds(user_days, item_days, cutoff)
    if fallback == "common_partition":
        log.warning("user_knowledge newest <= %s is %s but item_knowledge's is %s: using %s, the newest "
                    "partition both have", cutoff, max(d for d in user_days if d <= cutoff),
                    max(d for d in item_days if d <= cutoff), k_ds)
    return k_ds, fallback


def check_samples_schema(wh: Any, spec: JoinSpec) -> None:
    """The samples table's Delta schema has every dlrm_samples column with a castable type (else ValueError).

    Checked on the table schema, not on a DataFrame: Spark reading with the contract schema would turn
    a missing column into nulls silently.
    """
    import pyarrow as pa

    expected = schemas.get("dlrm_samples").schema()
    have = {f.name: f.type for f in _arrow_schema(wh.delta_table(spec.samples_table).schema())}
    missing = [f.name for f in expected if f.name not in have]
    if missing:
        raise ValueError(f"{spec.samples_table}: missing column(s) {', '.join(missing)}")
    for f in expected:
        got = have[f.name]
        if got == f.type or pa.types.is_string(f.type) and pa.types.is_large_string(got):
            continue
        if (pa.types.is_integer(f.type) or pa.types.is_floating(f.type)) and \
                (pa.types.is_integer(got) or pa.types.is_floating(got)):
            continue
        if pa.types.is_timestamp(f.type) and pa.types.is_timestamp(got):
            continue
        raise ValueError(f"{spec.samples_table}: column {f.name} has type {got}, expected {f.type}")


def _arrow_schema(delta_schema: Any) -> Any:
    import pyarrow as pa

    return pa.schema(delta_schema.to_arrow())


def _knowledge_frames(spark: Any, wh: Any, k_ds: str) -> tuple[Any, Any, str, int]:
    """(user_knowledge, item_knowledge, model_version, dim) of partition ``k_ds``, checked."""
    from pyspark.sql import functions as F

    uk = wh.read_spark(spark, "user_knowledge", ds=k_ds)
    ik = wh.read_spark(spark, "item_knowledge", ds=k_ds)

    def stats_of(name: str, df: Any, key: list[str]) -> Any:
        return df.agg(F.lit(name).alias("table"), F.collect_set("model_version").alias("versions"),
                      F.min(F.size("embedding")).alias("lo"), F.max(F.size("embedding")).alias("hi"),
                      F.count(F.lit(1)).alias("rows"), F.countDistinct(*key).alias("keys"))

    stats = {}
    rows = stats_of("user_knowledge", uk, ["user_id", "condition"]).union(
        stats_of("item_knowledge", ik, ["item_id"])).collect()  # one Spark job for both tables
    for row in rows:
        name = row["table"]
        versions = sorted(row["versions"] or [])
        if len(versions) != 1:
            raise ValueError(f"{name}[{k_ds}] must hold exactly one model_version, got {versions}")
        if row["lo"] != row["hi"]:
            raise ValueError(f"{name}[{k_ds}] has embeddings of widths {row['lo']}..{row['hi']}")
        if row["rows"] != row["keys"]:
            raise ValueError(f"{name}[{k_ds}] has {row['rows'] - row['keys']} duplicated key(s)")
        stats[name] = (versions[0], row["lo"])
    (uv, udim), (iv, idim) = stats["user_knowledge"], stats["item_knowledge"]
    if uv != iv:
        raise ValueError(f"model_version mismatch in knowledge partition {k_ds}: "
                         f"user_knowledge {uv!r} vs item_knowledge {iv!r}")
    if udim != idim:
        raise ValueError(f"embedding width mismatch in knowledge partition {k_ds}: "
                         f"user_knowledge D={udim} vs item_knowledge D={idim} (model {uv})")
    return uk, ik, uv, int(udim)


def _sql_list(values: list[str]) -> str:
    return "array(" + ", ".join("'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'" for v in values) + ")"


# Per (user, condition) the map holds struct(e = o_q, n = |o_q|); items carry e_i / |e_i| (unit).
# cosine = dot(o_q, unit e_i) / |o_q|; 0.0 when |o_q| = 0 (a zero unit vector stays zero); null when
# either side is missing. One map lookup per condition (the inner transform), then one zip/aggregate.
_NORM = "sqrt(aggregate({a}, CAST(0.0 AS DOUBLE), (acc, v) -> acc + v * v))"
_SIM = ("CASE WHEN {v} IS NULL OR _iu IS NULL THEN NULL WHEN {v}.n > 0 THEN "
        "CAST(aggregate(zip_with({v}.e, _iu, (x, y) -> x * y), CAST(0.0 AS DOUBLE), (acc, w) -> acc + w) "
        "/ {v}.n AS FLOAT) ELSE CAST(0.0 AS FLOAT) END")


def build_training_frame(spark: Any, samples: Any, items: Any, uk: Any | None, ik: Any | None, *,
                         spec: JoinSpec, conditions: list[str], knowledge_ds: str | None,
                         model_version: str | None, dim: int, broadcast_items: bool = True,
                         similarity: str = "numpy") -> Any:
    """The dlrm_training DataFrame of one day (lazy). ``uk``/``ik`` None: null LUM columns.

    Plan: samples -> broadcast items (target condition) -> shuffle join with one row per user (its
    condition -> vector map, built by a group-by of user_knowledge) -> broadcast item_knowledge.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    out_schema = dlrm_training.spark_schema(dim)
    sample_cols = [f.name for f in out_schema.fields if not f.name.startswith("lum_")]
    base = samples.select(*sample_cols)
    if uk is None or ik is None:
        lum = [F.lit(None).cast(out_schema[c].dataType).alias(c) for c in
               ("lum_match", "lum_target_match", "lum_user", "lum_item", "lum_knowledge_ds", "lum_model_version")]
        return base.select(*sample_cols, *lum)

    if similarity == "numpy":
        return _fused_frame(samples, items, uk, ik, spec=spec, conditions=conditions, out_schema=out_schema,
                            sample_cols=sample_cols, knowledge_ds=knowledge_ds, model_version=model_version,
                            dim=dim, broadcast_items=broadcast_items)
    prefix = spec.target_condition_prefix()
    target = (items.select(F.col("item_id").alias("_iid"),
                           F.concat(F.lit(prefix), F.col(spec.target_feature)).alias("_target_cond")))
    # One row per user: map condition -> (o_q, |o_q|) (user_knowledge's key (user_id, condition) is unique).
    entry = F.struct(F.col("embedding").alias("e"), F.expr(_NORM.format(a="embedding")).alias("n"))
    user_vecs = (uk.select(F.col("user_id").alias("_uid"), "condition", entry.alias("v"))
                 .groupBy("_uid")
                 .agg(F.map_from_entries(F.collect_list(F.struct("condition", "v"))).alias("_um")))
    norm = F.expr(_NORM.format(a="embedding"))
    item_vecs = ik.select(F.col("item_id").alias("_kid"), F.col("embedding").alias("_ie"),
                          F.when(norm > 0, F.expr("transform(embedding, x -> x / "
                                                  + _NORM.format(a="embedding") + ")"))
                          .otherwise(F.col("embedding")).alias("_iu"))
    if broadcast_items:
        item_vecs = F.broadcast(item_vecs)
    if similarity == "arrow":  # per user, once: the N condition vectors flattened in lum_match order
        conds = _sql_list(conditions)
        user_vecs = user_vecs.select(
            "_uid", "_um",
            F.expr(f"flatten(transform({conds}, c -> coalesce(element_at(_um, c).e, "
                   f"array_repeat(CAST(0.0 AS FLOAT), {dim}))))").alias("_uflat"),
            F.expr(f"transform({conds}, c -> element_at(_um, c).n)").alias("_unorm"))

    joined = (base
              .join(target, base["item_id"] == target["_iid"], "left")
              .join(user_vecs, base["user_id"] == user_vecs["_uid"], "left")
              .join(item_vecs, base["item_id"] == item_vecs["_kid"], "left")
              .withColumn("_ut", F.expr("element_at(_um, _target_cond)")))
    has = F.col("_um").isNotNull() & F.col("_ie").isNotNull()
    if similarity == "arrow":
        match, target_match = _arrow_similarity(len(conditions), dim)
    elif similarity == "sql":
        looked_up = f"transform({_sql_list(conditions)}, c -> element_at(_um, c))"
        match = F.expr(f"transform({looked_up}, v -> {_SIM.format(v='v')})")
        target_match = F.expr(_SIM.format(v="_ut"))
    else:
        raise ValueError(f"similarity must be 'numpy', 'arrow' or 'sql', got {similarity!r}")
    wanted = set(spec.features)

    def pick(name: str, value: Any) -> Any:
        dtype = out_schema[name].dataType
        keep = name in wanted
        return F.when(has & F.lit(keep), value.cast(dtype)).otherwise(F.lit(None).cast(dtype)).alias(name)

    return joined.select(
        *sample_cols,
        pick("lum_match", match),
        pick("lum_target_match", target_match),
        pick("lum_user", F.col("_ut.e")),
        pick("lum_item", F.col("_ie")),
        F.when(has, F.lit(knowledge_ds)).cast(T.StringType()).alias("lum_knowledge_ds"),
        F.when(has, F.lit(model_version)).cast(T.StringType()).alias("lum_model_version"),
    )


def _fused_frame(samples: Any, items: Any, uk: Any, ik: Any, *, spec: JoinSpec, conditions: list[str],
                 out_schema: Any, sample_cols: list[str], knowledge_ds: str | None, model_version: str | None,
                 dim: int, broadcast_items: bool) -> Any:
    """The ``similarity="numpy"`` plan: one shuffle join with one narrow row per user, one Arrow pass.

    user_knowledge -> (user_id, list<struct<i, e>>) once per user (i = index into the extended condition
    list: the configured conditions, then any item target condition not configured); items -> target
    index (broadcast); item_knowledge raw e_i (broadcast). Samples LEFT JOIN these, then ``mapInArrow``
    computes all six LUM columns per batch with numpy (stages.join.similarity.lum_columns). No per-row
    lambdas, no per-condition explode; each user's vectors are shuffled once.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from stages.join.similarity import lum_columns

    spark = samples.sparkSession
    prefix = spec.target_condition_prefix()
    targets = [r[0] for r in items.select(F.concat(F.lit(prefix), F.col(spec.target_feature)))
               .where(F.col(spec.target_feature).isNotNull()).distinct().collect()]
    extended = list(conditions) + sorted(set(targets) - set(conditions))
    cond_df = F.broadcast(spark.createDataFrame([(c, i) for i, c in enumerate(extended)],
                                                "_cond string, _cidx int"))
    target = F.broadcast(items.join(cond_df, F.concat(F.lit(prefix), F.col(spec.target_feature)) == cond_df["_cond"],
                                    "left")
                         .select(F.col("item_id").alias("_iid"), F.col("_cidx").alias("_tidx")))
    user_rows = (uk.join(cond_df, uk["condition"] == cond_df["_cond"], "inner")
                 .groupBy(F.col("user_id").alias("_uid"))
                 .agg(F.collect_list(F.struct(F.col("_cidx").alias("i"), F.col("embedding").alias("e")))
                      .alias("_ulist")))
    item_vecs = ik.select(F.col("item_id").alias("_kid"), F.col("embedding").alias("_ie"))
    if broadcast_items:
        item_vecs = F.broadcast(item_vecs)
    base = samples.select(*[F.col(c).cast(out_schema[c].dataType).alias(c) for c in sample_cols])
    joined = (base
              .join(target, base["item_id"] == target["_iid"], "left")
              .join(user_rows, base["user_id"] == user_rows["_uid"], "left")
              .join(item_vecs, base["item_id"] == item_vecs["_kid"], "left")
              .select(*sample_cols, "_tidx", "_ulist", "_ie"))
    result_schema = T.StructType([T.StructField(f.name, f.dataType, True) for f in out_schema.fields])
    n_cond, n_ext, wanted = len(conditions), len(extended), frozenset(spec.features)
    k_ds, version = str(knowledge_ds), str(model_version)

    def per_batch(batches: Any) -> Any:
        import pyarrow as pa

        for batch in batches:
            lum = lum_columns(batch.column("_ulist"), batch.column("_tidx"), batch.column("_ie"), n_cond=n_cond,
                              n_ext=n_ext, dim=dim, knowledge_ds=k_ds, model_version=version, wanted=wanted)
            cols = [batch.column(c) for c in sample_cols] + [lum[f.name] for f in out_schema.fields[len(sample_cols):]]
            yield pa.RecordBatch.from_arrays(cols, names=[f.name for f in out_schema.fields])

    return joined.mapInArrow(per_batch, result_schema)


def _arrow_similarity(n_cond: int, dim: int) -> tuple[Any, Any]:
    """(lum_match, lum_target_match) columns from the Arrow UDF of stages.join.similarity."""
    from pyspark.sql import functions as F

    from stages.join.similarity import RESULT_TYPE, batch_function

    udf = F.arrow_udf(batch_function(n_cond, dim), RESULT_TYPE)
    result = udf(F.col("_uflat"), F.col("_unorm"), F.col("_iu"), F.col("_ut.e"), F.col("_ut.n"))
    return result.getField("lum_match"), result.getField("lum_target_match")


def read_items(wh: Any, spec: JoinSpec) -> Any:
    """(item_id, <target_feature>) of the items dimension as a pyarrow table; key checked unique.

    Read with pyarrow (the dimension is unpartitioned and small: ML-1M 3,883 rows) and broadcast.
    """
    import pyarrow.compute as pc

    if not wh.exists("items"):
        raise ValueError("table items does not exist; the join needs the item categories (run lum ingest)")
    table = wh.read("items", columns=["item_id", spec.target_feature])
    if pc.count_distinct(table.column("item_id")).as_py() != table.num_rows:
        raise ValueError("items: key item_id has duplicated values")
    return table


def resolve_conditions(spec: JoinSpec, items: Any) -> list[str]:
    """The lum_match order: the spec's list, or ``<target_feature>=<v>`` for every items value, sorted."""
    if spec.conditions:
        return list(spec.conditions)
    values = {v for v in items.column(spec.target_feature).to_pylist() if v is not None}
    return [spec.target_condition_prefix() + str(v) for v in sorted(values)]


def sample_rows_by_day(wh: Any, spec: JoinSpec, days: list[str], samples: Any) -> dict[str, int]:
    """Rows per samples partition of ``days`` from the Delta log's file stats (free); a Spark count
    grouped by ds when some file has no ``num_records``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    actions = pa.table(wh.delta_table(spec.samples_table).get_add_actions(flatten=True))
    mine = actions.filter(pc.is_in(actions.column("partition.ds"), value_set=pa.array(days, pa.string())))
    counts = mine.column("num_records") if "num_records" in mine.column_names else None
    if counts is not None and counts.null_count == 0:
        out = dict.fromkeys(days, 0)
        for day, n in zip(mine.column("partition.ds").to_pylist(), counts.to_pylist()):
            out[day] += int(n)
        return out
    counted = {r["ds"]: int(r["count"]) for r in samples.groupBy("ds").count().collect()}
    return {d: counted.get(d, 0) for d in days}


def sample_rows(spark: Any, wh: Any, spec: JoinSpec, ds: str, samples: Any) -> int:
    """Rows of the samples partition from the Delta log's file stats (free); a Spark count without them."""
    return sample_rows_by_day(wh, spec, [ds], samples)[ds]


def check_days(out: Any, spec: JoinSpec, expected: dict[str, int]) -> dict[str, int]:
    """ONE Spark job: per ds of ``out``, rows == ``expected[ds]``, keys non-null and unique.

    Returns rows without knowledge per day. Raises ValueError naming the day and the column (null
    keys, duplicated keys, fan-out, or rows of a day not in ``expected``).
    """
    from pyspark.sql import functions as F

    key = list(dlrm_training.KEY)
    aggs = [F.count(F.lit(1)).alias("rows"), F.countDistinct(*key).alias("keys"),
            F.sum(F.col("lum_knowledge_ds").isNull().cast("long")).alias("without")]
    aggs += [F.sum(F.col(k).isNull().cast("long")).alias(f"null_{k}") for k in key]
    found = {row["ds"]: row for row in out.groupBy("ds").agg(*aggs).collect()}
    extra = sorted(set(found) - set(expected), key=str)
    if extra:
        raise ValueError(f"join output has rows of ds={extra[0]}, outside the days being written")
    without = {}
    for ds, n_samples in sorted(expected.items()):
        row = found.get(ds)
        rows = row["rows"] if row is not None else 0
        for k in key:
            if row is not None and row[f"null_{k}"]:
                raise ValueError(f"{spec.samples_table}[{ds}]: column {k} has {row[f'null_{k}']} null value(s)")
        if row is not None and row["keys"] != rows:
            raise ValueError(f"{spec.samples_table}[{ds}]: key ({', '.join(key)}) has "
                             f"{rows - row['keys']} duplicated row(s)")
        if rows != n_samples:
            raise ValueError(f"join fan-out: {rows} output rows for {n_samples} samples of {ds}")
        without[ds] = int(row["without"] or 0) if row is not None else 0
    return without


def output_metadata(spec: JoinSpec, conditions: list[str]) -> dict[str, str]:
    """Table metadata written with every dlrm_training commit (the lum_match order, the spec)."""
    return {dlrm_training.CONDITIONS_KEY: dlrm_training.encode_conditions(conditions),
            "lum.join_spec": spec.name}


@dataclass(frozen=True)
class Prepared:
    """What every day of a join shares: the spec, the lag, the warehouse, Spark, items and conditions."""

    spec: JoinSpec
    lag: int  # knowledge partition <= ds - lag
    wh: Any  # stages.warehouse.facade.Warehouse
    spark: Any
    items: Any  # broadcast Spark DataFrame (item_id, <target_feature>)
    conditions: list[str]  # the lum_match order


def check_config(cfg: Config) -> tuple[JoinSpec, int]:
    """(spec, lag) of ``cfg``; ValueError on an unknown similarity or lag < 1."""
    if cfg.similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {', '.join(SIMILARITIES)}, got {cfg.similarity!r}")
    spec = load_spec(cfg.spec)
    lag = spec.lag_days if cfg.lag_days is None else cfg.lag_days
    if lag < 1:
        raise ValueError(f"lag_days must be >= 1 (knowledge strictly before ds), got {lag}")
    return spec, lag


def prepare(spec: JoinSpec, lag: int, wh: Any) -> Prepared:
    """Start Spark, check the samples table schema, read items and resolve the condition order."""
    from pyspark.sql import functions as F

    from stages.core.spark import get_spark

    spark = get_spark()
    check_samples_schema(wh, spec)
    items_table = read_items(wh, spec)
    conditions = resolve_conditions(spec, items_table)
    items = F.broadcast(spark.createDataFrame(items_table.to_pandas(),
                                              f"item_id long, {spec.target_feature} string"))
    return Prepared(spec=spec, lag=lag, wh=wh, spark=spark, items=items, conditions=conditions)


def join_days(cfg: Config, prep: Prepared, samples: Any, expected: dict[str, int],
              k_ds: str | None) -> tuple[Any, dict[str, int], str | None, int]:
    """Build and check the training rows of ``samples`` (one or many days) with knowledge ``k_ds``.

    Returns (persisted DataFrame: the caller writes it then unpersists it, rows without knowledge per
    day, model version, dim). The checks fill the disk cache, the write reads it (computed once).
    """
    from pyspark import StorageLevel

    uk = ik = None
    version, dim = None, 1
    if k_ds is not None:
        uk, ik, version, dim = _knowledge_frames(prep.spark, prep.wh, k_ds)
    out = build_training_frame(prep.spark, samples, prep.items, uk, ik, spec=prep.spec,
                               conditions=prep.conditions, knowledge_ds=k_ds, model_version=version, dim=dim,
                               broadcast_items=cfg.broadcast_items, similarity=cfg.similarity)
    out = out.persist(StorageLevel.DISK_ONLY)
    try:
        without = check_days(out, prep.spec, expected)
    except BaseException:
        out.unpersist()
        raise
    return out, without, version, dim


def run(cfg: Config, *, ds: str, warehouse: str) -> dict[str, Any]:
    """Write partition ``ds`` of the spec's output table; returns a JSON-able summary."""
    from stages.warehouse.facade import Warehouse

    check_ds(ds)
    spec, lag = check_config(cfg)
    started = time.perf_counter()
    wh = Warehouse.of(warehouse)
    if not wh.exists(spec.samples_table) or ds not in wh.partitions(spec.samples_table):
        raise ValueError(f"{spec.samples_table} has no partition ds={ds}")
    cutoff = days_before(ds, lag)
    k_ds, fallback = choose_knowledge_ds(wh, cutoff)
    if k_ds is None and cfg.require_knowledge:
        raise ValueError(f"no user_knowledge/item_knowledge partition <= {cutoff} (ds {ds} - lag {lag}) "
                         "and require_knowledge is set")
    prep = prepare(spec, lag, wh)
    samples = wh.read_spark(prep.spark, spec.samples_table, ds=ds)
    n_samples = sample_rows(prep.spark, wh, spec, ds, samples)
    if k_ds is None:
        log.warning("no knowledge partition <= %s: writing %s[%s] with null LUM columns", cutoff,
                    spec.output_table, ds)
    out, without, version, dim = join_days(cfg, prep, samples, {ds: n_samples}, k_ds)
    try:
        # No app_id: a rerun must replace the partition (its inputs may have changed); the overwrite of
        # partition ds makes a rerun with the same inputs give the same rows.
        written = wh.write_spark_partition(spec.output_table, out, ds=ds,
                                           metadata=output_metadata(spec, prep.conditions))
    finally:
        out.unpersist()
    seconds = time.perf_counter() - started
    summary = {
        "table": spec.output_table, "ds": ds, "rows": n_samples,
        "rows_without_knowledge": without[ds],
        "knowledge_ds": k_ds, "model_version": version, "fallback": fallback, "dim": dim if k_ds else None,
        "conditions": len(prep.conditions), "spec": spec.name, "lag_days": lag,
        "version": written, "seconds": round(seconds, 3),
        "rows_per_s": round(n_samples / max(seconds, 1e-9), 1),
    }
    log.info("join %s: %d rows (%d without knowledge) from knowledge %s in %.1f s", ds, n_samples,
             summary["rows_without_knowledge"], k_ds, seconds)
    return summary
