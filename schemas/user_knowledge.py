"""``user_knowledge``: the LUM output o_q for each (user, condition) of day ds.

``embedding`` is ``fixed_size_list<float32>[D]`` (D = the model's output width, in the same space
as ``item_knowledge.embedding``); ``history_len`` is the number of behaviours the model saw.
``condition_logprob`` = log p(condition | the user's history), normalised over the conditions written for
that user (exp sums to 1 per user); ``temperature`` = T of the model version that wrote the row (its logit
scale is 1/T). Together with ``item_knowledge`` they score every item i for user u, c = the item's condition
(``category=<items.category>``):

    score(u, i) = condition_logprob(u, c) + <o(u, c), e_i> / T - logsumexp_{j in c} <o(u, c), e_j> / T

i.e. log p(c | history) + log p(i | history, c), the item term normalised over the items of c
(``stages.query.score``). Both columns are ``optional``: partitions written before they existed read them as
null, and readers that need them refuse such a partition (``stages.query.catalog``).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from schemas._base import TableSpec, embedding_type, field_, show_rows

OPTIONAL = ("condition_logprob", "temperature")


def _build(dim: int) -> pa.Schema:
    return pa.schema([
        field_("ds", pa.string(), nullable=False),
        field_("user_id", pa.int64(), nullable=False),
        field_("condition", pa.string(), nullable=False),  # e.g. "category=Comedy"
        field_("embedding", embedding_type(dim)),
        field_("model_version", pa.string()),
        field_("history_len", pa.int32()),
        field_("condition_logprob", pa.float32()),  # log p(condition | history), <= 0
        field_("temperature", pa.float32()),  # T = 1 / the model's logit scale, > 0
    ])


def _check_logprob_and_temperature(table: pa.Table) -> str | None:
    """Where present: condition_logprob finite and <= 0, temperature finite and > 0."""
    lp, temp = table.column("condition_logprob"), table.column("temperature")
    bad_lp = pc.invert(pc.fill_null(pc.and_(pc.is_finite(lp), pc.less_equal(lp, 1e-6)), True))
    if pc.any(bad_lp).as_py():
        return f"column condition_logprob must be finite and <= 0; rows: {show_rows(table, bad_lp, KEY)}"
    bad_t = pc.invert(pc.fill_null(pc.and_(pc.is_finite(temp), pc.greater(temp, 0)), True))
    if pc.any(bad_t).as_py():
        return f"column temperature must be finite and > 0; rows: {show_rows(table, bad_t, KEY)}"
    return None


SPEC = TableSpec(name="user_knowledge", partition_by=("ds",), key=("user_id", "condition"),
                 build_schema=_build, embedding_columns=("embedding",), optional=OPTIONAL,
                 checks=(_check_logprob_and_temperature,))
NAME, PARTITION_BY, KEY = SPEC.name, SPEC.partition_by, SPEC.key
schema, validate, spark_schema = SPEC.schema, SPEC.validate, SPEC.spark_schema
