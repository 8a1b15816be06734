"""``user_sequences``: per user, the last ``max_len`` behaviours with ts < end of ds, oldest first.

The four list columns are aligned (one entry per behaviour); ``history_len == len(item_ids)``;
``total_events`` counts every behaviour of the user up to ds (before truncation).

Buckets: ``bucket`` = splitmix64(user_id) % B (``stages.core.hashing.bucket_of``; B a power of two, the
sequences option ``buckets``, recorded in the partition's build record ``lum.sequences.buckets``). Each data
file holds ONE bucket, rows sorted by user_id, so the log's ``bucket`` min/max let a reader open only its
buckets' files (``stages.warehouse.buckets``). Partitions written before buckets existed read ``bucket`` as null.
Integer conditions: ``conditions`` stays the readable strings; the parquet files store them dictionary-encoded,
and the bucket reader returns them as ``list<dictionary<int32, string>>`` (each distinct string once per batch,
an int32 index per behaviour) instead of adding an id column whose dictionary would have to be kept stable
across days.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from schemas._base import TableSpec, field_, show_rows, ts_type

LIST_COLUMNS = ("item_ids", "conditions", "ts", "ratings")


def _build(dim: int) -> pa.Schema:
    return pa.schema([
        field_("ds", pa.string(), nullable=False),
        field_("user_id", pa.int64(), nullable=False),
        field_("item_ids", pa.list_(pa.int64())),
        field_("conditions", pa.list_(pa.string())),  # one condition string per behaviour
        field_("ts", pa.list_(ts_type())),
        field_("ratings", pa.list_(pa.float32())),
        field_("history_len", pa.int32()),  # == len(item_ids)
        field_("total_events", pa.int64()),  # behaviours up to ds, before truncation to max_len
        field_("bucket", pa.int32()),  # stable_hash64(user_id) % buckets; null in partitions older than buckets
    ])


def _aligned(table: pa.Table) -> str | None:
    lengths = pc.list_value_length(table.column("item_ids"))
    for col in LIST_COLUMNS[1:] + ("history_len",):
        other = table.column(col)
        other_len = other if col == "history_len" else pc.list_value_length(other)
        bad = pc.fill_null(pc.not_equal(pc.cast(other_len, pa.int64()), pc.cast(lengths, pa.int64())), True)
        if pc.any(bad).as_py():
            return (f"column {col} length differs from len(item_ids); rows: "
                    f"{show_rows(table, bad, ('ds', 'user_id', 'history_len'))}")
    return None


def _bucket_range(table: pa.Table) -> str | None:
    bad = pc.fill_null(pc.less(table.column("bucket"), 0), False)
    if pc.any(bad).as_py():
        return f"column bucket must be >= 0; rows: {show_rows(table, bad, ('ds', 'user_id', 'bucket'))}"
    return None


SPEC = TableSpec(name="user_sequences", partition_by=("ds",), key=("user_id",), build_schema=_build,
                 checks=(_aligned, _bucket_range), optional=("bucket",))
NAME, PARTITION_BY, KEY = SPEC.name, SPEC.partition_by, SPEC.key
schema, validate, spark_schema = SPEC.schema, SPEC.validate, SPEC.spark_schema
