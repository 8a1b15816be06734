"""``events``: one row per user behaviour, partitioned by the UTC day of ``ts``.

``event_idx`` is the row's global position in the source: the stable tie-break for equal ``ts`` (sources
such as MovieLens give many of one user's ratings the same timestamp).
"""

from __future__ import annotations

import pyarrow as pa

from schemas._base import TableSpec, field_, ts_type


def _build(dim: int) -> pa.Schema:
    return pa.schema([
        field_("user_id", pa.int64(), nullable=False),
        field_("item_id", pa.int64(), nullable=False),
        field_("ts", ts_type(), nullable=False),
        field_("scenario", pa.string(), nullable=False),  # e.g. "rating", "click"
        field_("rating", pa.float32()),  # null for implicit feedback
        field_("event_idx", pa.int64()),  # global source position; tie-break for equal ts
        field_("ds", pa.string(), nullable=False),  # UTC day of ts
    ])


SPEC = TableSpec(name="events", partition_by=("ds",), key=("user_id", "item_id", "ts", "scenario"),
                 build_schema=_build)
NAME, PARTITION_BY, KEY = SPEC.name, SPEC.partition_by, SPEC.key
schema, validate, spark_schema = SPEC.schema, SPEC.validate, SPEC.spark_schema
