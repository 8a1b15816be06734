"""``users``: the user dimension (not partitioned). ``source_id`` is the id in the source data
(e.g. ``1m_1``); attributes may be null."""

from __future__ import annotations

import pyarrow as pa

from schemas._base import TableSpec, field_


def _build(dim: int) -> pa.Schema:
    return pa.schema([
        field_("user_id", pa.int64(), nullable=False),
        field_("source_id", pa.string()),
        field_("age", pa.int32()),
        field_("gender", pa.string()),
        field_("occupation", pa.string()),
    ])


SPEC = TableSpec(name="users", partition_by=(), key=("user_id",), build_schema=_build)
NAME, PARTITION_BY, KEY = SPEC.name, SPEC.partition_by, SPEC.key
schema, validate, spark_schema = SPEC.schema, SPEC.validate, SPEC.spark_schema
