"""``dlrm_training``: every ``dlrm_samples`` row of ds plus LUM features (null when the user or
item has no knowledge in ``lum_knowledge_ds``, which is always < ds).

``lum_match[j]`` is sim(o_q, e_i) under the j-th configured condition (with ``liked`` in the knowledge: under
that condition with ``liked=yes``, as are ``lum_target_match`` and ``lum_user``; ``lum_target_match_disliked``
is the target's sim under ``liked=no``, null without such knowledge); that order is stored in the
Delta table's configuration under ``CONDITIONS_KEY`` as a JSON list (conditions contain commas),
written with ``Warehouse.write_partition(..., metadata={CONDITIONS_KEY: encode_conditions(c)})``
and read with ``decode_conditions(Warehouse.table_metadata("dlrm_training")[CONDITIONS_KEY])``.
"""

from __future__ import annotations

import json

import pyarrow as pa

from schemas import dlrm_samples
from schemas._base import TableSpec, embedding_type, field_

CONDITIONS_KEY = "lum.conditions"  # Delta table configuration key holding the lum_match order


def encode_conditions(conditions: list[str]) -> str:
    """The condition order as stored in the table configuration (a JSON list of strings)."""
    return json.dumps(list(conditions))


def decode_conditions(value: str) -> list[str]:
    out = json.loads(value)
    if not isinstance(out, list) or not all(isinstance(c, str) for c in out):
        raise ValueError(f"{CONDITIONS_KEY} must be a JSON list of strings, got {value!r}")
    return out


def _build(dim: int) -> pa.Schema:
    return pa.schema(dlrm_samples.fields() + [
        field_("lum_match", pa.list_(pa.float32())),  # one sim per condition, CONDITIONS_KEY order
        field_("lum_target_match", pa.float32()),  # sim under the target item's own category
        field_("lum_user", embedding_type(dim)),  # o_q under the target item's category
        field_("lum_item", embedding_type(dim)),  # e_i
        field_("lum_knowledge_ds", pa.string()),  # knowledge partition used (< ds)
        field_("lum_model_version", pa.string()),
        field_("lum_target_match_disliked", pa.float32()),  # sim under the target's category with liked=no
    ])


OPTIONAL = ("lum_target_match_disliked",)  # added after the first partitions: older ones read it as null

SPEC = TableSpec(name="dlrm_training", partition_by=("ds",), key=("user_id", "item_id", "ts"),
                 build_schema=_build, embedding_columns=("lum_user", "lum_item"), optional=OPTIONAL)
NAME, PARTITION_BY, KEY = SPEC.name, SPEC.partition_by, SPEC.key
schema, validate, spark_schema = SPEC.schema, SPEC.validate, SPEC.spark_schema
