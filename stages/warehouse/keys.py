"""Key checks over many files: a table's key (``schemas.<table>.KEY``) is non-null and unique in a partition.

``first_bad_key`` finds one null or duplicated key in key columns already in memory; ``check_staged_keys``
runs it over every staged file of one commit (all chunks of all shards) reading key columns only, and
``lum verify`` over each partition. Memory is bounded: at most ``KEY_CHECK_ROWS`` keys are held at once; a
larger set is checked in passes, pass p holding the rows whose first key column (an integer id in every
table) is p modulo the number of passes, so equal keys always meet in the same pass. Each pass reads the
key columns of the files again. Files whose first-key range (recorded in the manifest at write time)
overlaps no other file's cannot share a key with another file and are not read at all (each chunk was
checked on its own when written): an unsharded infer writes user_id-sorted chunks, so it reads nothing.
``StreamKeyCheck`` checks a stream of key batches as it comes (a Spark task's output), holding about
``KEY_STREAM_ROWS`` keys when the rows come in order of the first key column.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

KEY_CHECK_ROWS = 20_000_000  # keys held in memory per pass (key columns only, strings dictionary-encoded)
KEY_STREAM_ROWS = 1 << 20  # keys a StreamKeyCheck holds before it checks and drops the finished first-key values


def key_range(table: pa.Table, column: str) -> tuple[Any, Any]:
    """(min, max) of an int or string column as JSON values; (None, None) for other types or no rows."""
    col = table.column(column)
    if table.num_rows == 0 or not (pa.types.is_integer(col.type) or pa.types.is_string(col.type)):
        return None, None
    mm = pc.min_max(col)
    return mm["min"].as_py(), mm["max"].as_py()


def first_bad_key(keys: pa.Table, key: Sequence[str]) -> tuple[str, dict[str, Any]] | None:
    """One null or duplicated key of ``keys`` (the key columns) as (what is wrong, {column: value}); None if
    every key is non-null and unique. Cost: one hash group-by over the key columns."""
    for col in key:
        column = keys.column(col)
        if column.null_count:
            row = keys.filter(pc.is_null(column)).slice(0, 1).to_pylist()[0]
            return f"has a null {col}", {k: row[k] for k in key}
    if keys.num_rows == 0:
        return None
    if any(pa.types.is_dictionary(f.type) for f in keys.schema):
        keys = keys.unify_dictionaries()  # chunks read from different files carry different dictionaries
    counts = keys.group_by(list(key)).aggregate([([], "count_all")])
    dup = counts.filter(pc.greater(counts.column("count_all"), 1))
    if dup.num_rows == 0:
        return None
    row = dup.slice(0, 1).to_pylist()[0]
    return f"appears {row['count_all']} times", {k: row[k] for k in key}


class StreamKeyCheck:
    """``first_bad_key`` over a stream of key tables (``add`` each, then ``result``).

    When rows come in order of the first key column (a partition sorted by it), a key can only repeat within
    one first-key value, so once ``hold`` rows are held the values before the newest one are checked and
    dropped: memory is about ``hold`` keys plus the newest value's rows, whatever the stream's length. Rows out
    of order before anything was dropped: everything is held (memory grows with the stream, the check stays
    exact); out of order after a drop: ``RuntimeError``, since an earlier key might repeat unseen."""

    def __init__(self, key: Sequence[str], hold: int = KEY_STREAM_ROWS):
        self.key, self.hold = tuple(key), max(1, hold)
        self.pending: list[pa.Table] = []
        self.rows, self.next_check = 0, self.hold
        self.last: Any = None  # the largest first-key value seen while in order
        self.ordered, self.dropped = True, False
        self.bad: tuple[str, dict[str, Any]] | None = None

    def add(self, keys: pa.Table) -> None:
        if self.bad is not None or keys.num_rows == 0:
            return
        first = keys.column(self.key[0])
        if first.null_count:  # reported at once: nothing before it matters
            self.bad = first_bad_key(keys, self.key)
            return
        values = first.to_numpy(zero_copy_only=False)
        in_order = bool((values[1:] >= values[:-1]).all()) and (self.last is None or values[0] >= self.last)
        if not in_order and self.dropped:
            raise RuntimeError(f"key check: rows came out of order of {self.key[0]} ({first[0].as_py()!r} after "
                               f"{self.last!r}) after keys were dropped; it needs them sorted")
        self.ordered = self.ordered and in_order
        if self.ordered:
            self.last = first[len(first) - 1].as_py()
        self.pending.append(keys)
        self.rows += keys.num_rows
        if self.ordered and self.rows >= self.next_check:
            self._drop_finished()

    def _drop_finished(self) -> None:
        """Check the rows before the newest first-key value and keep only that value's rows."""
        table = pa.concat_tables(self.pending, promote_options="permissive")
        values = table.column(self.key[0]).to_numpy(zero_copy_only=False)
        cut = int(np.searchsorted(values, values[-1], side="left"))
        if cut:
            self.bad = first_bad_key(table.slice(0, cut), self.key)
            rest = table.slice(cut)
            self.pending = [rest.take(pa.array(np.arange(rest.num_rows)))]  # a copy: the slice keeps the rest
            self.rows, self.dropped = rest.num_rows, True
        self.next_check = self.rows + self.hold  # one value longer than hold: wait for another hold of rows

    def result(self) -> tuple[str, dict[str, Any]] | None:
        """The first bad key found (as ``first_bad_key`` says it), or None when every key was unique and set."""
        if self.bad is None and self.pending:
            self.bad = first_bad_key(pa.concat_tables(self.pending, promote_options="permissive"), self.key)
            self.pending, self.rows = [], 0
        return self.bad


def show_key(values: dict[str, Any]) -> str:
    """``user_id=3, condition='category=Comedy'`` (timestamps as ISO strings)."""
    return ", ".join(f"{k}={(v.isoformat() if hasattr(v, 'isoformat') else v)!r}" for k, v in values.items())


def overlapping(files: Sequence[dict]) -> list[dict]:
    """The files whose ``[key_min, key_max]`` overlaps another file's, plus every file without a range.

    A sweep in order of key_min: a file starting at or before the furthest end seen so far overlaps the file
    that reaches it (and every overlapping pair is caught this way)."""
    ranged = [f for f in files if f.get("key_min") is not None and f.get("key_max") is not None]
    ranged_ids = {id(f) for f in ranged}
    out = {id(f): f for f in files if id(f) not in ranged_ids}
    if len({type(f["key_min"]) for f in ranged}) > 1:  # mixed types cannot be ordered: check them all
        return list(files)
    reach: dict | None = None
    for f in sorted(ranged, key=lambda f: f["key_min"]):
        if reach is not None and f["key_min"] <= reach["key_max"]:
            out[id(f)] = f
            out[id(reach)] = reach
        if reach is None or f["key_max"] > reach["key_max"]:
            reach = f
    return list(out.values())


def check_keys_in_passes(read_keys: Callable[[int, int], list[pa.Table]], rows: int, key: Sequence[str]
                         ) -> tuple[str, dict[str, Any]] | None:
    """``first_bad_key`` over tables ``read_keys(p, n)`` yields for pass p of n, with n chosen so that a pass
    holds about ``KEY_CHECK_ROWS`` of the ``rows`` keys; ``read_keys`` keeps rows whose first key % n == p."""
    passes = max(1, math.ceil(rows / KEY_CHECK_ROWS))
    for p in range(passes):
        parts = read_keys(p, passes)
        if not parts:
            continue
        bad = first_bad_key(pa.concat_tables(parts, promote_options="permissive"), key)
        if bad is not None:
            return bad
    return None


def in_pass(table: pa.Table, column: str, p: int, passes: int) -> pa.Table:
    """Rows of ``table`` whose integer ``column`` is ``p`` modulo ``passes`` (all rows for one pass); nulls
    stay in pass 0 so that the null check sees them."""
    if passes == 1:
        return table
    values = table.column(column)
    ints = np.asarray(values.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
    mask = np.mod(ints, passes) == p
    if p == 0:
        mask |= np.asarray(values.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    return table.filter(pa.array(mask))


def check_staged_keys(fs: pafs.FileSystem, table_path: str, name: str, key: Sequence[str],
                      files: Sequence[dict], *, where: str) -> None:
    """Refuse a null or duplicated key across staged ``files`` (manifest entries: path, rows, key_min, key_max)
    with one ``ValueError`` naming the table, ``where`` (partition and run) and the key."""
    candidates = overlapping(files) if len(files) > 1 else []
    if not candidates:
        return
    rows = sum(int(f.get("rows") or 0) for f in candidates)

    def read_keys(p: int, passes: int) -> list[pa.Table]:
        out = []
        for f in candidates:
            try:
                with fs.open_input_file(f"{table_path}/{f['path']}") as handle:
                    keys = pq.read_table(handle, columns=list(key), read_dictionary=_string_columns(handle, key))
            except (OSError, pa.ArrowInvalid) as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ValueError(f"table {name} {where}: staged file {f['path']} is unreadable ({first}); "
                                 f"refusing to commit") from None
            out.append(in_pass(keys, key[0], p, passes))
        return out

    bad = check_keys_in_passes(read_keys, rows if _int_column(files) else 0, key)
    if bad is not None:
        what, values = bad
        raise ValueError(f"table {name} {where}: key ({', '.join(key)}) {what} across the staged files: "
                         f"{show_key(values)}; refusing to commit")


def _int_column(files: Sequence[dict]) -> bool:
    """Whether the first key column is an integer (passes need one); unknown ranges count as not."""
    return all(isinstance(f.get("key_min"), int) for f in files)


def _string_columns(handle: Any, key: Sequence[str]) -> list[str]:
    """Key columns stored as strings: read dictionary-encoded (a condition repeats per user)."""
    schema = pq.read_schema(handle)
    return [k for k in key if k in schema.names and pa.types.is_string(schema.field(k).type)]
