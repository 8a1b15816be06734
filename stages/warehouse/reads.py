"""Read helpers shared by ``Warehouse.read`` and point lookups (``stages.query``).

- ``partition_filters``: ``ds`` or ``start``/``end`` (inclusive) as ``(column, op, value)`` filters.
- ``filter_expression``: ANDed ``(column, op, value)`` filters as a pyarrow dataset expression, each
  value typed from the table schema (never assembled as predicate text).
- ``restore_types``: a table read back from Delta cast to its schema's types (Delta stores
  ``fixed_size_list`` embeddings as ``array<float>``).
- ``pyarrow_dataset``: a Delta snapshot as a pyarrow dataset; local tables through Arrow's native
  filesystem, so no Python object is left to Arrow's threads (stages.core.shutdown explains the abort
  at interpreter exit that delta-rs' Python filesystem handler can cause).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

import schemas
from stages.core.dates import check_ds

OPS = ("==", "!=", "<", "<=", ">", ">=", "in")

Filter = tuple[str, str, Any]


def partition_filters(ds: str | None, start: str | None, end: str | None) -> list[Filter]:
    """``ds`` (one day) or ``start``/``end`` as filters on ``ds``; ``ValueError`` for both or end < start."""
    if ds is not None and (start is not None or end is not None):
        raise ValueError("give either ds or start/end, not both")
    out: list[Filter] = []
    if ds is not None:
        out.append(("ds", "=", check_ds(ds)))
    if start is not None:
        out.append(("ds", ">=", check_ds(start, name="start")))
    if end is not None:
        out.append(("ds", "<=", check_ds(end, name="end")))
    if start is not None and end is not None and end < start:
        raise ValueError(f"end {end} is before start {start}")
    return out


def filter_expression(filters: Sequence[Filter], schema: pa.Schema, name: str) -> pads.Expression | None:
    """AND of ``(column, op, value)`` tuples as a pyarrow dataset expression (None when empty)."""
    expr = None
    for item in filters:
        if not (isinstance(item, (tuple, list)) and len(item) == 3):
            raise ValueError(f"filter must be (column, op, value), got {item!r}")
        column, op, value = item
        op = "==" if op == "=" else op
        if column not in schema.names:
            raise ValueError(f"table {name}: filter on unknown column {column!r}")
        if op not in OPS:
            raise ValueError(f"filter op must be one of {' '.join(OPS)}, got {op!r}")
        field = pc.field(column)
        if op == "in":
            term = field.isin(pa.array(list(value), type=schema.field(column).type))
        else:
            scalar = pa.scalar(value, type=schema.field(column).type)
            term = {"==": field == scalar, "!=": field != scalar, "<": field < scalar,
                    "<=": field <= scalar, ">": field > scalar, ">=": field >= scalar}[op]
        expr = term if expr is None else expr & term
    return expr


def restore_types(name: str, table: pa.Table) -> pa.Table:
    """Cast a table read back from Delta to its schema's types (fixed-size embeddings, string types).

    Columns not in the schema and tables without a schema module are left as they are.
    """
    if name not in schemas.TABLES:
        return table
    spec = schemas.get(name).SPEC
    target = spec.build_schema(spec.infer_dim(table) or 1)
    for i, column in enumerate(table.column_names):
        if column in target.names and table.schema.field(column).type != target.field(column).type:
            table = table.set_column(i, column, table.column(column).cast(target.field(column).type))
    return table


def local_root(table_uri: str) -> str | None:
    """The directory of a local table (a path or a ``file://`` URI), None for object stores."""
    parsed = urlparse(table_uri)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    return table_uri if parsed.scheme == "" else None


def pyarrow_dataset(delta: Any, pruning: Sequence[Filter] | None = None) -> pads.Dataset:
    """``delta.to_pyarrow_dataset`` over the files that ``pruning`` keeps (None: all).

    Local tables read through ``pyarrow.fs.LocalFileSystem`` (C++ only): delta-rs' default is a
    ``PyFileSystem`` whose Python file objects Arrow's threads release after the read returned, and
    one released during interpreter shutdown aborts the process. Object stores keep delta-rs' handler.
    """
    root = local_root(delta.table_uri)
    filesystem = None if root is None else pafs.SubTreeFileSystem(root.rstrip("/") or "/", pafs.LocalFileSystem())
    return delta.to_pyarrow_dataset(file_pruning_predicate=list(pruning) if pruning else None,
                                    filesystem=filesystem)
