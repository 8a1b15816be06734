"""``items``: the item dimension (not partitioned). ``category`` is the primary genre,
``categories`` all genres in source order."""

from __future__ import annotations

import pyarrow as pa

from schemas._base import TableSpec, field_


def _build(dim: int) -> pa.Schema:
    return pa.schema([
        field_("item_id", pa.int64(), nullable=False),
        field_("title", pa.string()),
        field_("category", pa.string()),  # primary genre: the condition feature "category"
        field_("categories", pa.list_(pa.string())),
    ])


SPEC = TableSpec(name="items", partition_by=(), key=("item_id",), build_schema=_build)
NAME, PARTITION_BY, KEY = SPEC.name, SPEC.partition_by, SPEC.key
schema, validate, spark_schema = SPEC.schema, SPEC.validate, SPEC.spark_schema
