"""Spark side of the ``user_sequences`` buckets: the ``bucket`` column and one bucket per written file.

``bucket`` = ``stages.core.hashing.bucket_of(user_id, buckets)``, computed by a vectorised Arrow UDF (the same
numpy splitmix64 the readers use; Spark's ANSI long arithmetic cannot wrap a 64-bit multiply). ``bucketed``
sends bucket b to shuffle partition b exactly and sorts each partition by (ds, bucket, user_id), so Spark's
writer makes one file per bucket, rows in user_id order. Spark's hash partitioner puts a row in
pmod(murmur3(key), n); ``partition_keys`` finds, with one tiny Spark job, an int key per bucket that lands in
partition b, and the rows are repartitioned on that key. Hash partitioning by ``bucket`` itself would
put several buckets in one file and leave other partitions empty.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from stages.core.hashing import bucket_of

KEY_SEARCH = 64  # candidate keys searched per bucket: every bucket finds one long before
_KEYS: dict[int, list[int]] = {}  # bucket count -> partition keys (Spark's hash is fixed: found once per process)


def check_buckets(buckets: object) -> int:
    """``buckets`` when it is a power of two >= 1; else a one-line ValueError."""
    if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1 or buckets & (buckets - 1):
        raise ValueError(f"buckets must be a power of two >= 1 (1, 2, 4, 8, 16, ...), got {buckets!r}")
    return buckets


def with_bucket(df, buckets: int):
    """``df`` (with ``user_id``) plus the int column ``bucket``."""
    # deferred: pyspark loads the JVM bridge; importing the stage (configs, registry) must not
    from pyspark.sql import functions as F

    n = check_buckets(buckets)

    @F.pandas_udf("int")
    def bucket(user_id: pd.Series) -> pd.Series:
        return pd.Series(bucket_of(user_id.to_numpy(dtype=np.int64), n))

    return df.withColumn("bucket", bucket(F.col("user_id")))


def partition_keys(spark, buckets: int) -> list[int]:
    """For each bucket b, an int k with pmod(murmur3(k), buckets) == b (Spark's own ``hash``: the partitioner's)."""
    if buckets in _KEYS:
        return _KEYS[buckets]
    # deferred: as in with_bucket
    from pyspark.sql import functions as F

    found = (spark.range(KEY_SEARCH * buckets).select(F.col("id").cast("int").alias("k"))
             .groupBy(F.pmod(F.hash("k"), F.lit(buckets)).alias("b")).agg(F.min("k").alias("k")).collect())
    keys = {int(r["b"]): int(r["k"]) for r in found}
    missing = [b for b in range(buckets) if b not in keys]
    if missing:
        raise ValueError(f"buckets={buckets}: no partition key found for bucket {missing[0]}")
    _KEYS[buckets] = [keys[b] for b in range(buckets)]
    return _KEYS[buckets]


def bucketed(df, buckets: int):
    """``df`` (with ``bucket``) repartitioned so shuffle partition b holds bucket b, sorted by (ds, bucket,
    user_id): written with ``partitionBy("ds")`` each bucket is one file (an empty bucket none)."""
    # deferred: as in with_bucket
    from pyspark.sql import functions as F

    keys = partition_keys(df.sparkSession, buckets)
    key = F.element_at(F.array(*[F.lit(k) for k in keys]), F.col("bucket") + F.lit(1))
    return (df.withColumn("lum_partition_key", key).repartition(buckets, "lum_partition_key")
            .sortWithinPartitions("ds", "bucket", "user_id").drop("lum_partition_key"))


def one_bucket_per_file(written) -> None:
    """The write's check (``WrittenCheck``): every written file's log stats hold one ``bucket`` value; else a
    ValueError and nothing is committed."""
    for item, stats in written:
        lo, hi = stats.stats.get("minValues", {}).get("bucket"), stats.stats.get("maxValues", {}).get("bucket")
        if lo is None or lo != hi:
            raise ValueError(f"user_sequences: file {item.relpath} holds buckets {lo}..{hi}, not one; "
                             "nothing committed")
