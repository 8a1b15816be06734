"""``dlrm_samples``: labelled ranking samples of day ds (MovieLens: ``label = rating >= 4``)."""

from __future__ import annotations

import pyarrow as pa

from schemas._base import TableSpec, field_, ts_type


def fields() -> list[pa.Field]:
    """The sample columns; ``dlrm_training`` starts with these."""
    return [
        field_("ds", pa.string(), nullable=False),
        field_("user_id", pa.int64(), nullable=False),
        field_("item_id", pa.int64(), nullable=False),
        field_("ts", ts_type(), nullable=False),
        field_("label", pa.int32()),  # 1 if rating >= 4 else 0
        field_("rating", pa.float32()),
        field_("scenario", pa.string()),
    ]


def _build(dim: int) -> pa.Schema:
    return pa.schema(fields())


SPEC = TableSpec(name="dlrm_samples", partition_by=("ds",), key=("user_id", "item_id", "ts"),
                 build_schema=_build)
NAME, PARTITION_BY, KEY = SPEC.name, SPEC.partition_by, SPEC.key
schema, validate, spark_schema = SPEC.schema, SPEC.validate, SPEC.spark_schema
