"""What the join reads besides the samples themselves: the items dimension, the condition order,
the sample row counts per day and the (checked) knowledge of the samples' users and items.

The items dimension is unpartitioned and small, so it is read with pyarrow and broadcast from Arrow (no
pandas); sample row counts come from the Delta log's file stats (free) so the output check needs no extra
Spark job. Knowledge is semi-joined with the samples' distinct users / items before anything groups, counts
or caches it: the knowledge partition is still scanned (and, unless Spark broadcasts the sample ids, shuffled)
once, but only the samples' rows go further. No aggregate spans a whole knowledge table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stages.join.checks import agree, arrow_item_stats, item_stats, peek_knowledge, table_stats, user_metrics
from stages.join.frame import user_vectors
from stages.join.similarity import vector_matrix
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


@dataclass
class Knowledge:
    """The knowledge the join of some sample days uses from partition ``k_ds``.

    ``users``: ``user_vectors`` of the samples' users, lazy, computed once by the join's write, which also
    observes their check aggregates (``check_users`` reads them: call it after that write's Spark job, before
    the commit). The item_knowledge rows of the samples' items are checked already: read to the driver
    (``item_rows``, for the Python tasks) or, when they stay in Spark, cached (``items``). ``model_version`` and
    ``dim`` come from those items (or one row of the sample users' rows when no sample item has any).
    """

    k_ds: str
    users: Any
    items: Any  # Spark DataFrame of the items' rows (cached), or None when they were read to the driver
    item_rows: pa.Table | None  # (item_id, embedding, model_version) on the driver, or None
    model_version: str | None
    dim: int
    observed: Any  # pyspark Observation of users' check aggregates
    item_check: tuple[str, int] | None

    def check_users(self) -> None:
        """ValueError when the users the write joined break ``table_stats`` or disagree with the items."""
        users = table_stats("user_knowledge", self.observed.get, self.k_ds)
        version, dim = agree(self.k_ds, users, self.item_check)
        if users is not None and (version, dim) != (self.model_version, self.dim):
            raise ValueError(f"model_version mismatch in knowledge partition {self.k_ds}: user_knowledge "
                             f"{version!r} D={dim}, the join used {self.model_version!r} D={self.dim}")

    def item_table(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted item ids, (n, dim) float32 vectors) of the items' rows, for ``stages.join.merge.item_lookup``
        (items x D floats, what a broadcast join would ship as well)."""
        table = self.item_rows if self.item_rows is not None else self.items.select("item_id", "embedding").toArrow()
        ids = np.asarray(table.column("item_id").to_numpy(zero_copy_only=False), np.int64)
        vectors, _ = vector_matrix(table.column("embedding"), self.dim)
        order = np.argsort(ids, kind="stable")
        return ids[order], vectors[order]

    def release(self) -> None:
        if self.items is not None:
            self.items.unpersist()


def read_knowledge(spark: Any, wh: Warehouse, k_ds: str, samples: Any, extended: list[str],
                   versions: Mapping[str, int | None] | None = None, *, items_to_driver: bool = True) -> Knowledge:
    """The checked ``Knowledge`` of partition ``k_ds`` at the pinned ``versions`` (latest when None).

    Only the knowledge of the users / items of ``samples`` goes on: left semi-joins on their distinct ids,
    ahead of the per-user group-by (``stages.join.frame.user_vectors``), which is neither cached nor counted
    by a job of its own. One small Spark job reads the items' rows to the driver and pyarrow checks them
    (``items_to_driver``; else they are cached and checked in Spark); when no sample item has knowledge,
    version and width come from one row of the sample users' (or else any) knowledge rows.
    """
    from pyspark import StorageLevel  # deferred: the CLI/DAG import the join for its Config without Spark
    from pyspark.sql import Observation

    pins = versions or {}
    uk_all = wh.read_spark(spark, "user_knowledge", ds=k_ds, version=pins.get("user_knowledge"))
    ik_all = wh.read_spark(spark, "item_knowledge", ds=k_ds, version=pins.get("item_knowledge"))
    uk = uk_all.join(samples.select("user_id").distinct(), on="user_id", how="left_semi")
    observed = Observation()
    users = user_vectors(uk, extended).observe(observed, *user_metrics())
    ik = ik_all.join(samples.select("item_id").distinct(), on="item_id", how="left_semi")
    item_rows = ik.select("item_id", "embedding", "model_version").toArrow() if items_to_driver else None
    ik_cached = None if items_to_driver else ik.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        stats = arrow_item_stats(item_rows) if item_rows is not None else item_stats(ik_cached)
        item_check = table_stats("item_knowledge", stats, k_ds)
        version, dim = item_check or peek_knowledge(uk, ik)
        if version is None:
            version, dim = peek_knowledge(uk_all, ik_all)
    except BaseException:
        if ik_cached is not None:
            ik_cached.unpersist()
        raise
    return Knowledge(k_ds=k_ds, users=users, items=ik_cached, item_rows=item_rows, model_version=version, dim=dim,
                     observed=observed, item_check=item_check)
