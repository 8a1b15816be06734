"""Table contracts: one ``TableSpec`` per table, a generic ``validate`` and the Spark ``StructType``.

Every table module in ``schemas/`` exposes its spec as ``NAME``, ``PARTITION_BY``, ``KEY``, ``schema``,
``validate`` and ``spark_schema``. The pyarrow schema is the one source of truth; the Spark struct is derived
from it (``to_spark_struct``).

``validate`` casts column by column (so an error names the column) and checks, in order: unknown or missing
columns, castability, non-null key/partition columns, ``ds`` is a calendar day equal to the partition being
written, key uniqueness within a partition (a group-by: the costliest check), then the table's own checks.
Errors are one-line ``ValueError``s naming the table and column with up to 5 offending rows.
Embedding columns are ``fixed_size_list<float32>[dim]``; Delta stores them as ``array<float>``, so ``dim``
is taken from the data when not given.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

DS_PATTERN = r"^\d{4}-\d{2}-\d{2}$"
MAX_SHOWN_ROWS = 5  # rows quoted in an error message; enough to see the pattern, short enough for one line

# Extra check for one table: (table after casting) -> error message or None.
Check = Callable[[pa.Table], "str | None"]


def ts_type() -> pa.DataType:
    """Event time: microseconds since the epoch, UTC (Delta's ``timestamp`` type)."""
    return pa.timestamp("us", tz="UTC")


def embedding_type(dim: int) -> pa.DataType:
    """An embedding vector: ``fixed_size_list<float32>[dim]`` (Delta stores ``array<float>``)."""
    return pa.list_(pa.field("element", pa.float32()), dim)


def field_(name: str, dtype: pa.DataType, *, nullable: bool = True) -> pa.Field:
    return pa.field(name, dtype, nullable=nullable)


def show_rows(table: pa.Table, mask: pa.Array | pa.ChunkedArray | None = None,
              columns: Sequence[str] | None = None) -> str:
    """Up to ``MAX_SHOWN_ROWS`` rows (where ``mask`` is true) as a compact one-line string."""
    sub = table if mask is None else table.filter(mask)
    if columns is not None:
        sub = sub.select([c for c in columns if c in sub.column_names])
    rows = sub.slice(0, MAX_SHOWN_ROWS).to_pylist()
    text = "; ".join(
        "{" + ", ".join(f"{k}={_short(v)}" for k, v in row.items()) + "}" for row in rows
    )
    return text.replace("\n", " ")


def _short(value: object) -> str:
    text = repr(value.isoformat() if hasattr(value, "isoformat") else value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class TableSpec:
    """The contract of one table."""

    name: str  # the Delta table directory under the warehouse
    partition_by: tuple[str, ...]  # ("ds",) or (): the contract partitions by the UTC day only
    key: tuple[str, ...]  # unique within a partition; never null
    build_schema: Callable[[int], pa.Schema]  # dim -> schema (dim ignored by tables without embeddings)
    embedding_columns: tuple[str, ...] = ()  # fixed_size_list<float32>[dim] columns
    checks: tuple[Check, ...] = field(default=())  # table-specific checks after the generic ones
    # nullable columns added after the table's first partitions: a writer that omits one gets nulls, and a
    # commit adds it to an older table's Delta schema (older partitions then read it as null)
    optional: tuple[str, ...] = ()

    # ---- schema ---------------------------------------------------------------------------------
    def schema(self, dim: int | None = None) -> pa.Schema:
        """The pyarrow schema; tables with embeddings need ``dim`` (the embedding width, > 0)."""
        if self.embedding_columns:
            if dim is None:
                raise ValueError(f"{self.name}: schema needs dim (embedding width) for "
                                 f"{', '.join(self.embedding_columns)}")
            if not isinstance(dim, int) or dim <= 0:
                raise ValueError(f"{self.name}: dim must be a positive int, got {dim!r}")
        return self.build_schema(dim or 1)

    def spark_schema(self, dim: int | None = None):
        """The pyspark ``StructType`` derived from ``schema`` (Spark arrays carry no size)."""
        return to_spark_struct(self.build_schema(dim or 1))

    # ---- validation -----------------------------------------------------------------------------
    def infer_dim(self, table: pa.Table) -> int | None:
        """Embedding width from the data: the fixed size, or the length of every non-null vector."""
        for col in self.embedding_columns:
            if col not in table.column_names:
                continue
            arr = table.column(col)
            if pa.types.is_fixed_size_list(arr.type):
                return arr.type.list_size
            if pa.types.is_null(arr.type) or arr.null_count == len(arr):
                continue
            lengths = pc.list_value_length(arr)
            lo, hi = pc.min(lengths).as_py(), pc.max(lengths).as_py()
            if lo != hi:
                bad = pc.not_equal(lengths, pa.scalar(lo, lengths.type))
                raise ValueError(f"{self.name}: column {col} has vectors of lengths {lo}..{hi} "
                                 f"(must all be equal); rows: {show_rows(table, bad, self.key)}")
            return lo
        return None

    def validate(self, table: pa.Table, *, ds: str | None = None, dim: int | None = None) -> pa.Table:
        """Cast ``table`` to the schema and check it; returns the cast table (schema column order).

        ``ds``: the partition being written; a missing ``ds`` column is filled with it, and every
        row must belong to it. ``dim``: embedding width (inferred from the data when None; a table
        whose embeddings are all null then gets width 1, which Delta stores as ``array<float>``).
        """
        if not isinstance(table, pa.Table):
            raise ValueError(f"{self.name}: expected a pyarrow.Table, got {type(table).__name__}")
        if ds is not None:
            if not self.partition_by:
                raise ValueError(f"{self.name}: table is not partitioned, but ds={ds!r} was given")
            if not isinstance(ds, str) or not re.match(DS_PATTERN, ds):
                raise ValueError(f"{self.name}: ds must be YYYY-MM-DD, got {ds!r}")
            if "ds" not in table.column_names:
                table = table.append_column("ds", pa.array([ds] * table.num_rows, pa.string()))
        if dim is None and self.embedding_columns:
            dim = self.infer_dim(table)
        schema = self.build_schema(dim or 1)
        for name in self.optional:
            if name not in table.column_names:
                table = table.append_column(name, pa.nulls(table.num_rows, schema.field(name).type))
        extra = [c for c in table.column_names if c not in schema.names]
        if extra:
            raise ValueError(f"{self.name}: unknown column(s) {', '.join(extra)}; "
                             f"expected {', '.join(schema.names)}")
        missing = [c for c in schema.names if c not in table.column_names]
        if missing:
            raise ValueError(f"{self.name}: missing column(s) {', '.join(missing)}")
        columns = []
        for f in schema:
            col = table.column(f.name)
            if col.type != f.type:
                try:
                    col = col.cast(f.type, safe=True)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    raise ValueError(f"{self.name}: column {f.name} has type {table.column(f.name).type}, "
                                     f"cannot cast to {f.type}: {first}") from None
            columns.append(col)
        out = pa.table(columns, schema=_nullable_copy(schema))
        self._check_not_null(out, schema)
        if "ds" in self.partition_by:
            self._check_ds(out, ds)
        self._check_unique(out)
        for check in self.checks:
            message = check(out)
            if message:
                raise ValueError(f"{self.name}: {message}")
        return out.cast(schema)

    def _check_not_null(self, table: pa.Table, schema: pa.Schema) -> None:
        for f in schema:
            if f.nullable:
                continue
            col = table.column(f.name)
            if col.null_count:
                raise ValueError(f"{self.name}: column {f.name} has {col.null_count} null value(s) "
                                 f"(key/partition columns must be non-null); rows: "
                                 f"{show_rows(table, pc.is_null(col), schema.names[:6])}")

    def _check_ds(self, table: pa.Table, ds: str | None) -> None:
        col = table.column("ds")
        ok = pc.match_substring_regex(col, DS_PATTERN)
        parsed = pc.strptime(col, format="%Y-%m-%d", unit="s", error_is_null=True)
        # strptime rolls 2000-02-30 over to 2000-03-01: a real day prints back as itself
        roundtrip = pc.strftime(parsed, format="%Y-%m-%d")
        ok = pc.fill_null(pc.and_(ok, pc.equal(roundtrip, col)), False)
        bad = pc.invert(ok)
        n_bad = pc.sum(pc.cast(bad, pa.int64())).as_py() or 0
        if n_bad:
            raise ValueError(f"{self.name}: column ds has {n_bad} value(s) that are not a YYYY-MM-DD day; "
                             f"rows: {show_rows(table, bad, ('ds',) + self.key)}")
        if ds is not None:
            outside = pc.not_equal(col, pa.scalar(ds))
            n_out = pc.sum(pc.cast(outside, pa.int64())).as_py() or 0
            if n_out:
                raise ValueError(f"{self.name}: column ds has {n_out} row(s) outside partition {ds}; "
                                 f"rows: {show_rows(table, outside, ('ds',) + self.key)}")

    def _check_unique(self, table: pa.Table) -> None:
        group_cols = list(dict.fromkeys(self.partition_by + self.key))
        if not group_cols or table.num_rows == 0:
            return
        counts = table.select(group_cols).group_by(group_cols).aggregate([([], "count_all")])
        dup = pc.greater(counts.column("count_all"), 1)
        n_dup = pc.sum(pc.cast(dup, pa.int64())).as_py() or 0
        if n_dup:
            raise ValueError(f"{self.name}: key ({', '.join(self.key)}) has {n_dup} duplicated value(s); "
                             f"rows: {show_rows(counts, dup)}")


def _nullable_copy(schema: pa.Schema) -> pa.Schema:
    """The schema with every field nullable: nulls are reported by our check, not by pyarrow."""
    return pa.schema([f.with_nullable(True) for f in schema])


def to_spark_struct(schema: pa.Schema):
    """A pyspark ``StructType`` with the same column names, types and nullability as ``schema``.

    Supported: int8..int64, float32/64, bool, string, large_string, date32, timestamp (any unit;
    Spark keeps microseconds), list / large_list / fixed_size_list (Spark ``ArrayType``).
    """
    # deferred: pyspark loads the JVM bridge; schemas are imported by every stage and by lum query
    from pyspark.sql import types as T

    return T.StructType([T.StructField(f.name, _spark_type(f.type, f.name), f.nullable) for f in schema])


def _spark_type(dtype: pa.DataType, name: str):
    # deferred: as in to_spark_struct
    from pyspark.sql import types as T

    simple = {
        pa.int8(): T.ByteType(), pa.int16(): T.ShortType(), pa.int32(): T.IntegerType(),
        pa.int64(): T.LongType(), pa.float32(): T.FloatType(), pa.float64(): T.DoubleType(),
        pa.bool_(): T.BooleanType(), pa.string(): T.StringType(), pa.large_string(): T.StringType(),
        pa.date32(): T.DateType(),
    }
    if dtype in simple:
        return simple[dtype]
    if pa.types.is_timestamp(dtype):
        return T.TimestampType() if dtype.tz else T.TimestampNTZType()
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype) or pa.types.is_fixed_size_list(dtype):
        value = dtype.value_field
        return T.ArrayType(_spark_type(value.type, name), containsNull=value.nullable)
    raise ValueError(f"column {name}: no Spark type for pyarrow type {dtype}")
