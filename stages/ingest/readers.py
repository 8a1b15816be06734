"""Streamed reading of an events file: parquet, CSV or JSONL as tables of ``batch_rows`` rows.

Parquet goes through ``ParquetFile.iter_batches``, CSV through the streaming ``pyarrow.csv.open_csv`` (every
column read as text and cast per batch by the caller, so no type is guessed from the first block and a bad value
is reported with its row), JSONL through ``pyarrow.json.open_json`` (the known columns get fixed JSON types; the
first record fixes whether ``ts`` is a string or a number). Memory: one reader block plus one batch. A file that
cannot be parsed is a one-line ``ValueError`` naming the file and the row reached.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.json as pajson
import pyarrow.parquet as pq
from pyarrow import csv

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
BLOCK_BYTES = 8 << 20  # CSV/JSON reader block: the unit the streaming readers parse at once
JSON_TYPES = {"user_id": pa.int64(), "item_id": pa.int64(), "scenario": pa.string(), "rating": pa.float64(),
              "event_idx": pa.int64(), "ds": pa.string()}


def first_line(message: Any) -> str:
    """The first line of an exception's message (its type name when empty)."""
    text = str(message)
    return text.splitlines()[0] if text else type(message).__name__


def open_batches(path: str, batch_rows: int) -> tuple[list[str], Iterator[pa.Table]]:
    """(column names, tables of exactly ``batch_rows`` rows, the last shorter) of an events file, streamed."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"events file not found: {path}")
    kind = FORMATS.get(p.suffix.lower())
    if kind is None:
        raise ValueError(f"events file must end in .parquet, .pq, .csv, .jsonl or .ndjson, got {p.name}")
    try:
        if kind == "parquet":
            reader = pq.ParquetFile(p)
            names, batches = reader.schema_arrow.names, reader.iter_batches(batch_size=batch_rows)
        elif kind == "csv":
            read = csv.ReadOptions(block_size=BLOCK_BYTES)
            with csv.open_csv(p, read_options=read) as header:
                names = header.schema.names
            # every column as text, cast per batch: no type guessed from the first block, an error names the row
            convert = csv.ConvertOptions(column_types={n: pa.string() for n in names}, null_values=[""],
                                         strings_can_be_null=True)  # an empty cell is null, in every column
            batches = csv.open_csv(p, read_options=read, convert_options=convert)
        else:
            with p.open("rb") as handle:
                first = json.loads(next((line for line in handle if line.strip()), b"{}"))
            names = list(first)
            types = {n: t for n, t in JSON_TYPES.items() if n in names}
            if "ts" in first:
                ts = first["ts"]
                types["ts"] = pa.string() if isinstance(ts, str) else pa.int64() if isinstance(ts, int) \
                    else pa.float64()
            parse = pajson.ParseOptions(explicit_schema=pa.schema(types), unexpected_field_behavior="infer")
            batches = pajson.open_json(p, read_options=pajson.ReadOptions(block_size=BLOCK_BYTES),
                                       parse_options=parse)
    except (pa.ArrowInvalid, OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"events file {path} cannot be read: {first_line(exc)}") from None
    return names, _rebatch(batches, batch_rows, path)


def _rebatch(batches: Iterable[pa.RecordBatch], rows: int, path: str) -> Iterator[pa.Table]:
    pending: list[pa.RecordBatch] = []
    seen = held = 0
    try:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            pending.append(batch)
            held += batch.num_rows
            while held >= rows:
                table = pa.Table.from_batches(pending)
                yield table.slice(0, rows)
                rest = table.slice(rows)
                pending, held, seen = rest.to_batches(), rest.num_rows, seen + rows
        if held:
            yield pa.Table.from_batches(pending)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"events file {path} cannot be read after row {seen + held}: {first_line(exc)}") from None
