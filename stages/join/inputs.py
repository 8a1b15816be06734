"""What the join reads besides the samples themselves: the items dimension, the condition order,
the sample row counts per day and the (checked) knowledge of the samples' users and items.

The items dimension is unpartitioned and small, so it is read with pyarrow and broadcast from Arrow (no
pandas); sample row counts come from the Delta log's file stats (free) so the output check needs no extra
Spark job. Knowledge is semi-joined with the samples' distinct users / items before anything groups, counts
or caches it: the knowledge partition is still scanned (and, unless Spark broadcasts the sample ids, shuffled)
once, but only the samples' rows go further.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from stages.join.checks import check_knowledge, peek_knowledge
from stages.join.frame import user_vectors
from stages.join.spec import JoinSpec
from stages.warehouse.facade import Warehouse


def read_items(wh: Warehouse, spec: JoinSpec, version: int | None = None) -> pa.Table:
    """(item_id, <target_feature>) of the items dimension (at ``version``) as a pyarrow table; key checked unique."""
    if not wh.exists("items"):
        raise ValueError("table items does not exist; the join needs the item categories (run lum ingest)")
    table = wh.read("items", columns=["item_id", spec.target_feature], version=version)
    if pc.count_distinct(table.column("item_id")).as_py() != table.num_rows:
        raise ValueError("items: key item_id has duplicated values")
    return table


def items_frame(spark: Any, items: pa.Table, spec: JoinSpec) -> Any:
    """``read_items``' table as a broadcast Spark DataFrame (item_id long, <target_feature> string), from Arrow."""
    from pyspark.sql import functions as F  # deferred: the CLI/DAG import the join for its Config without Spark

    data = items.select(["item_id", spec.target_feature]).cast(
        pa.schema([("item_id", pa.int64()), (spec.target_feature, pa.string())]))
    return F.broadcast(spark.createDataFrame(data, f"item_id long, {spec.target_feature} string"))


def resolve_conditions(spec: JoinSpec, items: pa.Table) -> list[str]:
    """The lum_match order: the spec's list, or ``<target_feature>=<v>`` for every items value, sorted."""
    if spec.conditions:
        return list(spec.conditions)
    values = {v for v in items.column(spec.target_feature).to_pylist() if v is not None}
    return [spec.target_condition_prefix() + str(v) for v in sorted(values)]


def sample_rows_by_day(wh: Warehouse, spec: JoinSpec, days: list[str], samples: Any,
                       version: int | None = None) -> dict[str, int]:
    """Rows per samples partition of ``days`` (at ``version``) from the Delta log's file stats (free); a Spark
    count of ``samples`` (the DataFrame of those days) grouped by ds when some file has no ``num_records``."""
    actions = pa.table(wh.delta_table(spec.samples_table, version).get_add_actions(flatten=True))
    mine = actions.filter(pc.is_in(actions.column("partition.ds"), value_set=pa.array(days, pa.string())))
    counts = mine.column("num_records") if "num_records" in mine.column_names else None
    if counts is not None and counts.null_count == 0:
        out = dict.fromkeys(days, 0)
        for day, n in zip(mine.column("partition.ds").to_pylist(), counts.to_pylist()):
            out[day] += int(n)
        return out
    counted = {r["ds"]: int(r["count"]) for r in samples.groupBy("ds").count().collect()}
    return {d: counted.get(d, 0) for d in days}


def read_knowledge(spark: Any, wh: Warehouse, k_ds: str, samples: Any, extended: list[str],
                   versions: Mapping[str, int | None] | None = None) -> tuple[Any, Any, str | None, int]:
    """(user vectors, item_knowledge, model_version, dim) of partition ``k_ds`` at the pinned ``versions``
    (latest when None), checked (one Spark job).

    Only the knowledge of the users / items of ``samples`` is read on: left semi-joins on their distinct ids,
    ahead of the per-user group-by (``stages.join.frame.user_vectors``). Both results are persisted (the
    check job fills the cache, the join reads it): the caller unpersists them. When no sample user or item
    has knowledge, version and width come from one row of the partitions (no full scan).
    """
    from pyspark import StorageLevel  # deferred: the CLI/DAG import the join for its Config without Spark

    pins = versions or {}
    uk_all = wh.read_spark(spark, "user_knowledge", ds=k_ds, version=pins.get("user_knowledge"))
    ik_all = wh.read_spark(spark, "item_knowledge", ds=k_ds, version=pins.get("item_knowledge"))
    uk = uk_all.join(samples.select("user_id").distinct(), on="user_id", how="left_semi")
    users = user_vectors(uk, extended).persist(StorageLevel.DISK_ONLY)
    ik = (ik_all.join(samples.select("item_id").distinct(), on="item_id", how="left_semi")
          .persist(StorageLevel.MEMORY_AND_DISK))
    try:
        version, dim = check_knowledge(users, ik, k_ds)
        if version is None:
            version, dim = peek_knowledge(uk_all, ik_all)
    except BaseException:
        users.unpersist()
        ik.unpersist()
        raise
    return users, ik, version, dim
