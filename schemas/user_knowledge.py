"""``user_knowledge``: the LUM output o_q for each (user, condition) of day ds.

``embedding`` is ``fixed_size_list<float32>[D]`` (D = the model's output width, in the same space
as ``item_knowledge.embedding``); ``history_len`` is the number of behaviours the model saw.
"""

from __future__ import annotations

import pyarrow as pa

from schemas._base import TableSpec, embedding_type, field_


def _build(dim: int) -> pa.Schema:
    return pa.schema([
        field_("ds", pa.string(), nullable=False),
        field_("user_id", pa.int64(), nullable=False),
        field_("condition", pa.string(), nullable=False),  # e.g. "category=Comedy"
        field_("embedding", embedding_type(dim)),
        field_("model_version", pa.string()),
        field_("history_len", pa.int32()),
    ])


SPEC = TableSpec(name="user_knowledge", partition_by=("ds",), key=("user_id", "condition"),
                 build_schema=_build, embedding_columns=("embedding",))
NAME, PARTITION_BY, KEY = SPEC.name, SPEC.partition_by, SPEC.key
schema, validate, spark_schema = SPEC.schema, SPEC.validate, SPEC.spark_schema
