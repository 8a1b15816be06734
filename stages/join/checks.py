"""The join's input and output checks; each failure is a ``ValueError`` naming the table, day and column.

Inputs: the samples table's Delta schema (``check_samples_schema``) and the knowledge rows the join uses
(``check_knowledge``: one model version, one embedding width, unique keys, the same in both).
Output: rows per day == sample rows of that day, keys non-null and unique (``check_days``), asserted
before any commit so ``dlrm_training`` is untouched by a failed check.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

import schemas
from schemas import dlrm_training
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


def check_knowledge(users: Any, ik: Any, k_ds: str) -> tuple[str | None, int]:
    """(model_version, dim) of the knowledge rows the join uses from partition ``k_ds``; ONE Spark job.

    ``users`` is ``stages.join.frame.user_vectors`` of the samples' users (its check columns), ``ik`` the
    item_knowledge rows of the samples' items, so the counts cover what is joined. Those rows must hold exactly
    one model_version, one embedding width and unique keys ((user_id, condition) / item_id); both tables must
    agree on version and width. A table with no such rows is not checked; (None, 1) when neither has any.
    """
    from pyspark.sql import functions as F  # deferred: stage.py is imported for its Config without Spark

    user_stats = users.agg(F.lit("user_knowledge").alias("table"),
                           F.array_distinct(F.flatten(F.collect_list("_versions"))).alias("versions"),
                           F.min("_lo").alias("lo"), F.max("_hi").alias("hi"),
                           F.sum("_rows").alias("rows"), F.sum("_keys").alias("keys"))
    item_stats = ik.agg(F.lit("item_knowledge").alias("table"), F.collect_set("model_version").alias("versions"),
                        F.min(F.size("embedding")).alias("lo"), F.max(F.size("embedding")).alias("hi"),
                        F.count(F.lit(1)).alias("rows"), F.countDistinct("item_id").alias("keys"))
    stats = {}
    rows = user_stats.union(item_stats).collect()  # one Spark job for both tables
    for row in rows:
        name = row["table"]
        if not row["rows"]:
            continue
        versions = sorted(row["versions"] or [])
        if len(versions) != 1:
            raise ValueError(f"{name}[{k_ds}] must hold exactly one model_version, got {versions}")
        if row["lo"] != row["hi"]:
            raise ValueError(f"{name}[{k_ds}] has embeddings of widths {row['lo']}..{row['hi']}")
        if row["rows"] != row["keys"]:
            raise ValueError(f"{name}[{k_ds}] has {row['rows'] - row['keys']} duplicated key(s)")
        stats[name] = (versions[0], row["lo"])
    if not stats:
        return None, 1
    uv, udim = stats.get("user_knowledge") or stats["item_knowledge"]
    iv, idim = stats.get("item_knowledge") or stats["user_knowledge"]
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


def check_days(out: Any, spec: JoinSpec, expected: dict[str, int]) -> dict[str, int]:
    """ONE Spark job: per ds of ``out``, rows == ``expected[ds]``, keys non-null and unique.

    Returns rows without knowledge per day. Raises ValueError naming the day and the column (null
    keys, duplicated keys, fan-out, or rows of a day not in ``expected``).
    """
    from pyspark.sql import functions as F  # deferred: stage.py is imported for its Config without Spark

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
