"""Checks of one Delta table of the warehouse; each returns findings (table, ds, check, status, detail).

- ``files``: every data file the Delta log names (in the selected partitions) exists, its parquet footer opens,
  its row count equals the log's ``numRecords``, and its columns and types are the schema's (``schema``).
- ``keys``: per partition, the key columns only (``stages.warehouse.keys``: non-null, unique; memory bounded).
- ``finite``: every value of the embedding columns is finite (NaN/inf are errors; null vectors are allowed),
  streamed in record batches.
- ``deep``: every record batch passes ``schemas.<table>.validate`` (all columns read; off by default).
Partitions with a missing or unreadable file are not read: their ``keys``/``finite`` rows say ``skipped``.
Problems are reported one row each, up to ``MAX_ROWS_PER_CHECK`` per (table, check), then a count.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

import schemas
from stages.warehouse.commit import filesystem_for
from stages.warehouse.facade import Warehouse
from stages.warehouse.keys import check_keys_in_passes, in_pass, show_key

OK, WARN, ERROR, SKIPPED = "ok", "warn", "error", "skipped"
MAX_ROWS_PER_CHECK = 10  # problem rows shown per (table, check); the rest are counted in one more row
BATCH_ROWS = 65_536  # rows per record batch of the streamed checks


def finding(table: str, ds: str | None, check: str, status: str, detail: str) -> dict[str, Any]:
    return {"table": table, "ds": ds or "", "check": check, "status": status, "detail": detail}


def check_table(wh: Warehouse, name: str, *, ds: str | None = None, deep: bool = False) -> list[dict]:
    """Every check of table ``name`` (partition ``ds`` only when given; unpartitioned tables whole)."""
    spec = schemas.get(name).SPEC
    try:
        delta = wh.delta_table(name)
        actions = pa.table(delta.get_add_actions(flatten=True)).to_pylist()
        log_schema = pa.schema(delta.schema().to_arrow())
    except Exception as exc:  # a damaged log fails in delta-rs's own ways: report it, check the rest
        return [finding(name, ds, "log", ERROR, f"Delta log unreadable: {_line(exc)}")]
    partitioned = "ds" in spec.partition_by
    if partitioned and ds is not None:
        actions = [a for a in actions if a.get("partition.ds") == ds]
    out = _log_schema(name, spec, log_schema)
    bad_days, file_rows = _files(wh, name, spec, actions)
    out += file_rows
    days = sorted({a.get("partition.ds") for a in actions}) if partitioned else [None]
    if not actions:
        return out + [finding(name, ds, "files", OK, f"no data files{' in partition ' + ds if ds else ''}")]
    dataset = delta.to_pyarrow_dataset()
    rows_of = {d: sum(int(a.get("num_records") or 0) for a in actions if a.get("partition.ds") == d) for d in days}
    checks = [("keys", lambda d: _keys(dataset, spec, d, rows_of[d]))]
    if spec.embedding_columns:
        checks.append(("finite", lambda d: _finite(dataset, spec, d)))
    if deep:
        checks.append(("validate", lambda d: _validate(dataset, spec, d)))
    for check, run in checks:
        problems = []
        for day in days:
            if day in bad_days:
                problems.append(finding(name, day, check, SKIPPED, "partition has missing or unreadable files"))
                continue
            try:
                detail = run(day)
            except (OSError, ValueError, pa.ArrowException) as exc:
                detail = f"unreadable: {_line(exc)}"
            if detail:
                problems.append(finding(name, day, check, ERROR, detail))
        out += capped(problems, name, check) or [finding(name, ds if partitioned else None, check, OK, _scope(days))]
    return out


def _log_schema(name: str, spec: Any, log_schema: pa.Schema) -> list[dict]:
    expected = spec.build_schema(1)
    problems = _schema_problems(log_schema, expected, spec.optional)
    if problems:
        return [finding(name, None, "schema", ERROR, f"Delta log schema: {problems[0]}")]
    return [finding(name, None, "schema", OK, f"{len(expected)} columns as schemas.{name}")]


def _files(wh: Warehouse, name: str, spec: Any, actions: list[dict]) -> tuple[set, list[dict]]:
    """(partitions with a bad file, findings) of the existence, footer, row-count and schema checks."""
    fs, root = filesystem_for(wh.table_uri(name))
    expected = pa.schema([f for f in spec.build_schema(1) if f.name not in spec.partition_by])
    paths = [a["path"] for a in actions]
    infos = fs.get_file_info([f"{root}/{p}" for p in paths]) if paths else []
    problems, bad_days = [], set()
    for action, info in zip(actions, infos):
        day, rel = action.get("partition.ds"), action["path"]
        detail = _file_problem(fs, info, action, expected, spec.optional)
        if detail:
            bad_days.add(day)
            problems.append(finding(name, day, "files", ERROR, f"{rel}: {detail}"))
    ok = finding(name, None, "files", OK, f"{len(actions)} files exist, open and match the log's row counts")
    return bad_days, (capped(problems, name, "files") or ([ok] if actions else []))


def _file_problem(fs: pafs.FileSystem, info: pafs.FileInfo, action: dict, expected: pa.Schema,
                  optional: tuple[str, ...] = ()) -> str | None:
    if info.type != pafs.FileType.File:
        return "data file is missing (the Delta log names it)"
    try:
        with fs.open_input_file(info.path) as handle:
            meta = pq.read_metadata(handle)
            footer = meta.schema.to_arrow_schema()
    except Exception as exc:  # truncated or overwritten files fail in parquet's own ways
        return f"parquet footer unreadable ({_line(exc)})"
    logged = action.get("num_records")
    if logged is not None and int(logged) != meta.num_rows:
        return f"{meta.num_rows} rows in the file, {int(logged)} in the Delta log"
    problems = _schema_problems(footer, expected, optional)
    return f"schema: {problems[0]}" if problems else None


def _schema_problems(got: pa.Schema, expected: pa.Schema, optional: tuple[str, ...] = ()) -> list[str]:
    """Missing/unknown columns and type differences (string widths, list kinds and timezone names ignored). An
    ``optional`` column may be missing: data written before it existed, read back as null."""
    out = [f"missing column {f.name}" for f in expected if f.name not in got.names and f.name not in optional]
    out += [f"unknown column {f.name}" for f in got if f.name not in expected.names]
    for f in expected:
        if f.name in got.names and _norm(got.field(f.name).type) != _norm(f.type):
            out.append(f"column {f.name} is {got.field(f.name).type}, schema says {f.type}")
    return out


def _norm(t: pa.DataType) -> pa.DataType:
    if pa.types.is_dictionary(t):
        return _norm(t.value_type)
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t) \
            or pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        return pa.list_(_norm(t.value_type))
    if pa.types.is_timestamp(t):
        return pa.timestamp(t.unit, tz="UTC" if t.tz else None)
    return t


def _day_filter(day: str | None):
    return None if day is None else pc.field("ds") == day


def _keys(dataset: Any, spec: Any, day: str | None, rows: int) -> str | None:
    key = list(spec.key)

    def read_keys(p: int, passes: int) -> list[pa.Table]:
        out = []
        for batch in dataset.to_batches(columns=key, filter=_day_filter(day), batch_size=BATCH_ROWS):
            table = pa.Table.from_batches([batch])
            for i, f in enumerate(table.schema):  # a condition repeats per user: hold it dictionary-encoded
                if pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
                    table = table.set_column(i, f.name, pc.dictionary_encode(table.column(i)))
            out.append(in_pass(table, key[0], p, passes))
        return out

    bad = check_keys_in_passes(read_keys, rows, key)
    return None if bad is None else f"key ({', '.join(key)}) {bad[0]}: {show_key(bad[1])}"


def _finite(dataset: Any, spec: Any, day: str | None) -> str | None:
    cols = list(spec.embedding_columns)
    bad_total, first = 0, None
    for batch in dataset.to_batches(columns=list(spec.key) + cols, filter=_day_filter(day), batch_size=BATCH_ROWS):
        for col in cols:
            lists = batch.column(col)
            flat = pc.list_flatten(lists)
            bad = pc.invert(pc.fill_null(pc.is_finite(flat), True))
            n_bad = pc.sum(pc.cast(bad, pa.int64())).as_py() or 0
            if n_bad and first is None:
                row = pc.list_parent_indices(lists).filter(bad)[0].as_py()
                values = {k: batch.column(k)[row].as_py() for k in spec.key}
                first = f"{col} of {show_key(values)} has {pc.filter(flat, bad)[0].as_py()}"
            bad_total += n_bad
    return None if first is None else f"{bad_total} non-finite value(s); first: {first}"


def _validate(dataset: Any, spec: Any, day: str | None) -> str | None:
    for batch in dataset.to_batches(filter=_day_filter(day), batch_size=BATCH_ROWS):
        table = pa.Table.from_batches([batch])
        if "ds" not in spec.partition_by and "ds" in table.column_names:
            table = table.drop_columns(["ds"])
        try:
            spec.validate(table, ds=day)
        except ValueError as exc:  # validate's own one-line message names the table, column and rows
            return str(exc).splitlines()[0]
    return None


def capped(problems: list[dict], name: str, check: str) -> list[dict]:
    if len(problems) <= MAX_ROWS_PER_CHECK:
        return problems
    more = problems[MAX_ROWS_PER_CHECK:]
    status = ERROR if any(p["status"] == ERROR for p in more) else more[0]["status"]
    return problems[:MAX_ROWS_PER_CHECK] + [finding(name, "", check, status, f"... and {len(more)} more like these")]


def _scope(days: Iterable[str | None]) -> str:
    days = [d for d in days if d is not None]
    if not days:
        return "whole table"
    return f"{len(days)} partition(s) {days[0]}..{days[-1]}" if len(days) > 1 else f"partition {days[0]}"


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
