"""The join's input and output checks; each failure is a ``ValueError`` naming the table, day and column.

Inputs: the samples table's Delta schema (``check_samples_schema``) and the knowledge rows the join uses
(``table_stats``, ``agree``: one model version, one embedding width, unique keys, the same in both).
Output: rows per day == sample rows of that day (``OutputCheck``, on the written files' footers) and keys
non-null and unique (the warehouse bridge), asserted before any commit so ``dlrm_training`` is untouched by
a failed check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

import schemas
from stages.join.spec import JoinSpec
from stages.warehouse.facade import Warehouse


def _castable(expected: pa.DataType, got: pa.DataType) -> bool:
    """Whether a samples column of type ``got`` reads as the contract's ``expected`` type."""
    if got == expected or pa.types.is_string(expected) and pa.types.is_large_string(got):
        return True
    numeric = (pa.types.is_integer, pa.types.is_floating)
    if any(t(expected) for t in numeric) and any(t(got) for t in numeric):
        return True
    return pa.types.is_timestamp(expected) and pa.types.is_timestamp(got)


def check_samples_schema(wh: Warehouse, spec: JoinSpec, version: int | None = None) -> None:
    """The samples table's Delta schema (at ``version``; latest when None) has every dlrm_samples column with a
    castable type (else ValueError).

    Checked on the table schema, not on a DataFrame: Spark reading with the contract schema would turn
    a missing column into nulls silently.
    """
    expected = schemas.get("dlrm_samples").schema()
    have = {f.name: f.type for f in pa.schema(wh.delta_table(spec.samples_table, version).schema().to_arrow())}
    missing = [f.name for f in expected if f.name not in have]
    if missing:
        raise ValueError(f"{spec.samples_table}: missing column(s) {', '.join(missing)}")
    for f in expected:
        if not _castable(f.type, have[f.name]):
            raise ValueError(f"{spec.samples_table}: column {f.name} has type {have[f.name]}, expected {f.type}")


def user_metrics() -> list[Any]:
    """Aggregates over ``stages.join.frame.user_vectors``' check columns: observed while the join's write
    computes the users (``DataFrame.observe``), so they cost no job of their own."""
    from pyspark.sql import functions as F  # deferred: stage.py is imported for its Config without Spark

    return [F.array_distinct(F.flatten(F.collect_list("_versions"))).alias("versions"), F.min("_lo").alias("lo"),
            F.max("_hi").alias("hi"), F.sum("_rows").alias("rows"), F.sum("_keys").alias("keys")]


def item_stats(ik: Any) -> dict[str, Any]:
    """The same aggregates over ``ik``, the item_knowledge rows of the samples' items (one small Spark job)."""
    from pyspark.sql import functions as F  # deferred: stage.py is imported for its Config without Spark

    return ik.agg(F.collect_set("model_version").alias("versions"), F.min(F.size("embedding")).alias("lo"),
                  F.max(F.size("embedding")).alias("hi"), F.count(F.lit(1)).alias("rows"),
                  F.countDistinct("item_id").alias("keys")).collect()[0].asDict()


def arrow_item_stats(rows: pa.Table) -> dict[str, Any]:
    """``item_stats`` of the items' rows read to the driver (item_id, embedding, model_version), by pyarrow."""
    lengths = pc.list_value_length(rows.column("embedding"))
    return {"versions": pc.unique(rows.column("model_version").drop_null()).to_pylist(), "rows": rows.num_rows,
            "lo": pc.min(lengths).as_py(), "hi": pc.max(lengths).as_py(),
            "keys": pc.count_distinct(rows.column("item_id")).as_py()}


def table_stats(name: str, stats: dict[str, Any], k_ds: str) -> tuple[str, int] | None:
    """(model_version, dim) of the rows ``stats`` (``user_metrics`` / ``item_stats``) describe; None without
    rows. ValueError unless they hold exactly one model_version, one embedding width and unique keys."""
    if not stats["rows"]:
        return None
    versions = sorted(stats["versions"] or [])
    if len(versions) != 1:
        raise ValueError(f"{name}[{k_ds}] must hold exactly one model_version, got {versions}")
    if stats["lo"] != stats["hi"]:
        raise ValueError(f"{name}[{k_ds}] has embeddings of widths {stats['lo']}..{stats['hi']}")
    if stats["rows"] != stats["keys"]:
        raise ValueError(f"{name}[{k_ds}] has {stats['rows'] - stats['keys']} duplicated key(s)")
    return versions[0], int(stats["lo"])


def agree(k_ds: str, users: tuple[str, int] | None, items: tuple[str, int] | None) -> tuple[str | None, int]:
    """(model_version, dim) both tables' ``table_stats`` share (either may be None); ValueError on a mismatch."""
    if users is None and items is None:
        return None, 1
    uv, udim = users or items
    iv, idim = items or users
    if uv != iv:
        raise ValueError(f"model_version mismatch in knowledge partition {k_ds}: "
                         f"user_knowledge {uv!r} vs item_knowledge {iv!r}")
    if udim != idim:
        raise ValueError(f"embedding width mismatch in knowledge partition {k_ds}: "
                         f"user_knowledge D={udim} vs item_knowledge D={idim} (model {uv})")
    return uv, int(udim)


def peek_knowledge(uk: Any, ik: Any) -> tuple[str | None, int]:
    """(model_version, dim) from the first row of ``uk`` or ``ik`` (one small Spark job, no full scan)."""
    from pyspark.sql import functions as F  # deferred: stage.py is imported for its Config without Spark

    cols = [F.col("model_version"), F.size("embedding").alias("dim")]
    rows = uk.select(*cols).limit(1).union(ik.select(*cols).limit(1)).collect()
    return (rows[0]["model_version"], int(rows[0]["dim"])) if rows else (None, 1)


class OutputCheck:
    """The output check of one join write, run by the warehouse bridge on the files Spark wrote, before the
    commit (``Warehouse.write_arrow_days(..., check=...)``): no extra pass over the output.

    Per day of ``expected``: rows (the footers' row counts) == sample rows, else a fan-out ``ValueError``; a file
    of another day is an error. Keys non-null and unique: the bridge's ``check_written_keys``, which runs first.
    ``without`` (filled by the call): rows without knowledge per day, from the footers' null counts of
    ``lum_knowledge_ds``; a file without that count is counted by a Spark read of that one column. ``before``:
    checks that need the write's job done first (the user knowledge observed by it), called first.
    """

    def __init__(self, spark: Any, spec: JoinSpec, root: str, expected: dict[str, int],
                 before: Callable[[], Any] | None = None):
        self.spark, self.spec, self.root, self.expected = spark, spec, root, dict(expected)
        self.before = before
        self.without: dict[str, int] = {}

    def _nulls(self, relpaths: list[str]) -> int:
        from pyspark.sql import functions as F  # deferred: stage.py is imported for its Config without Spark

        data = self.spark.read.schema("lum_knowledge_ds string").parquet(*[f"{self.root}/{p}" for p in relpaths])
        return int(data.where(F.col("lum_knowledge_ds").isNull()).count())

    def __call__(self, files: Any) -> None:
        if self.before is not None:
            self.before()
        rows = dict.fromkeys(self.expected, 0)
        without = dict.fromkeys(self.expected, 0)
        uncounted: dict[str, list[str]] = {}
        for item, stats in files:
            if item.ds not in rows:
                raise ValueError(f"join output has rows of ds={item.ds}, outside the days being written")
            rows[item.ds] += int(stats.stats["numRecords"])
            nulls = stats.stats.get("nullCount", {}).get("lum_knowledge_ds")
            if nulls is None:
                uncounted.setdefault(item.ds, []).append(item.relpath)
            else:
                without[item.ds] += int(nulls)
        for ds, n_samples in sorted(self.expected.items()):
            if rows[ds] != n_samples:
                raise ValueError(f"join fan-out: {rows[ds]} output rows for {n_samples} samples of {ds}")
        for ds, relpaths in uncounted.items():
            without[ds] += self._nulls(relpaths)
        self.without = without
