"""``item_knowledge``: the item token embedding e_i of day ds's model version
(``fixed_size_list<float32>[D]``, the space that ``user_knowledge`` lives in)."""

from __future__ import annotations

import pyarrow as pa

from schemas._base import TableSpec, embedding_type, field_


def _build(dim: int) -> pa.Schema:
    return pa.schema([
        field_("ds", pa.string(), nullable=False),
        field_("item_id", pa.int64(), nullable=False),
        field_("embedding", embedding_type(dim)),
        field_("model_version", pa.string()),
    ])


SPEC = TableSpec(name="item_knowledge", partition_by=("ds",), key=("item_id",), build_schema=_build,
                 embedding_columns=("embedding",))
NAME, PARTITION_BY, KEY = SPEC.name, SPEC.partition_by, SPEC.key
schema, validate, spark_schema = SPEC.schema, SPEC.validate, SPEC.spark_schema
