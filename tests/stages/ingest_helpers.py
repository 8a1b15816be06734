"""Helpers shared by the ingestion tests."""

from __future__ import annotations

import pyarrow as pa

from tests.conftest import tree_snapshot  # noqa: F401  (re-exported for the ingest tests)


def canonical(table: pa.Table, keys: list[str]) -> pa.Table:
    """Rows sorted by ``keys``, columns in name order, one chunk: compare contents with ``.equals``."""
    out = table.select(sorted(table.column_names)).sort_by([(k, "ascending") for k in keys])
    return out.combine_chunks()
