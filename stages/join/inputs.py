"""What the join reads besides the samples themselves: the items dimension, the condition order,
the sample row counts per day and the (checked) knowledge partition.

The items dimension is unpartitioned and small, so it is read with pyarrow and broadcast; sample row
counts come from the Delta log's file stats (free) so the output check needs no extra Spark job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from stages.join.checks import check_knowledge
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


def read_knowledge(spark: Any, wh: Warehouse, k_ds: str,
                   versions: Mapping[str, int | None] | None = None) -> tuple[Any, Any, str, int]:
    """(user_knowledge, item_knowledge, model_version, dim) of partition ``k_ds`` at the pinned ``versions``
    (latest when None), checked (one Spark job)."""
    pins = versions or {}
    uk = wh.read_spark(spark, "user_knowledge", ds=k_ds, version=pins.get("user_knowledge"))
    ik = wh.read_spark(spark, "item_knowledge", ds=k_ds, version=pins.get("item_knowledge"))
    version, dim = check_knowledge(uk, ik, k_ds)
    return uk, ik, version, dim
