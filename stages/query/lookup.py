"""Look up user knowledge: ``query_user_knowledge`` (Python, returns Arrow) and ``lum query``.

One or many users (``query_many``: an Arrow batch in, an Arrow table out), one, several or all conditions,
one day or the newest, the table as of any version or timestamp (Delta time travel: ``as_of``; the log and
vacuum retentions bound how far back, see stages.warehouse.history). Reads go through
``stages.warehouse.scan``: only files of the day asked for, and of those only the files and row groups whose
``user_id`` range can hold a requested user, are opened. Filters are Arrow expressions built from typed
arguments (``user_id`` as int64, conditions as strings); no SQL or predicate text is ever assembled from user
input.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stages.core.dates import check_ds
from stages.core.tables import format_table
from stages.warehouse.facade import Warehouse
from stages.warehouse.history import check_readable
from stages.warehouse.reads import restore_types
from stages.warehouse.scan import add_actions, read_users, unique_ids

TABLE = "user_knowledge"
QUERYABLE = ("user_knowledge", "dlrm_training")  # tables keyed by user_id that `lum query` reads
EMBEDDING_SHOWN = 4  # values of an embedding printed in table format (JSON prints all)
DICTIONARY = {"user_knowledge": ("condition", "model_version")}  # few distinct strings: decoded as dictionaries


def _check_user_ids(user_ids: Sequence[int]) -> list[int]:
    if isinstance(user_ids, (int, str)) or not user_ids:
        raise ValueError(f"user_ids must be a non-empty list of integers, got {user_ids!r}")
    bad = [u for u in user_ids if isinstance(u, bool) or not isinstance(u, int)]
    if bad:
        raise ValueError(f"user_ids must be integers, got {bad[0]!r}")
    return sorted(set(user_ids))


def _check_conditions(conditions: Sequence[str] | None) -> list[str] | None:
    if conditions is None:
        return None
    if isinstance(conditions, str):
        conditions = [conditions]
    bad = [c for c in conditions if not isinstance(c, str) or "=" not in c]
    if bad:
        raise ValueError(f"condition must look like feature=value (e.g. category=Comedy), got {bad[0]!r}")
    return sorted(set(conditions))


def query_table(warehouse: Warehouse | str | None, table: str, *, user_ids: Sequence[int], ds: str | None = None,
                conditions: Sequence[str] | None = None, version: int | None = None,
                as_of: int | str | dt.datetime | None = None) -> pa.Table:
    """Rows of ``table`` (``user_knowledge`` or ``dlrm_training``) for ``user_ids`` on day ``ds``.

    ``ds=None``: the newest partition of the snapshot. ``as_of``: the table as of a Delta version (int) or
    a timestamp (ISO 8601 string or datetime; naive means UTC): the newest version committed at or before
    it. ``version`` is the older spelling of an integer ``as_of``. Unknown users give an empty table (same
    schema). ``ValueError`` for a malformed day, a day with no partition, a missing table, a version beyond
    the latest, a timestamp before the first commit, a version vacuum has emptied, or bad arguments. Rows
    sorted by key.
    """
    _check_table(table, conditions)
    out, ds, delta = _read(Warehouse.of(warehouse), table, _check_user_ids(user_ids), conditions, ds, version, as_of)
    keys = [("user_id", "ascending")] + ([("condition", "ascending")] if table == "user_knowledge" else
                                         [("item_id", "ascending"), ("ts", "ascending")])
    out = out.sort_by(keys)  # the resolved day and version travel as schema metadata (for the summary)
    return out.replace_schema_metadata({**(out.schema.metadata or {}), b"lum.ds": ds.encode(),
                                        b"lum.version": str(delta.version()).encode()})


def _check_table(table: str, conditions: Sequence[str] | None) -> None:
    if table not in QUERYABLE:
        raise ValueError(f"table must be one of {', '.join(QUERYABLE)}, got {table!r}")
    if conditions is not None and table != "user_knowledge":
        raise ValueError(f"conditions apply to user_knowledge only, not {table}")


def _read(wh: Warehouse, table: str, ids: Any, conditions: Sequence[str] | None, ds: str | None,
          version: int | None, as_of: int | str | dt.datetime | None) -> tuple[pa.Table, str, Any]:
    """(rows of ``ids`` in the schema's types, the day read, the Delta snapshot)."""
    conds = _check_conditions(conditions)
    if ds is not None:
        check_ds(ds, name="ds")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise ValueError(f"version must be an integer, got {version!r}")
    if version is not None and as_of is not None and as_of != version:
        raise ValueError(f"give as_of or version, not both (as_of {as_of!r}, version {version!r})")
    if as_of is not None:
        version = wh.version_as_of(table, as_of)
    delta = wh.delta_table(table, version)  # ValueError when missing
    actions = add_actions(delta)  # listed once: the partition check below and the scan share it
    days = actions.column("partition.ds")
    if ds is None:
        if len(days) == 0:
            raise ValueError(f"table {table} has no partitions (version {delta.version()})")
        ds = pc.max(days).as_py()
    if not pc.any(pc.equal(days, ds)).as_py():
        raise ValueError(f"table {table} has no partition ds={ds} (version {delta.version()})")
    if as_of is not None:  # an old snapshot: name the retention rather than a missing file
        check_readable(wh, table, delta.version(), days=[ds])
    extra = None if conds is None else pc.field("condition").isin(pa.array(conds, pa.string()))
    rows = read_users(delta, ds, ids, extra, actions=actions, dictionary=DICTIONARY.get(table, ()))
    return restore_types(table, rows), ds, delta


def _user_id_array(user_ids: Any) -> np.ndarray:
    """The ``user_id`` column of an Arrow table, or an Arrow/NumPy array or a list, as int64 (no nulls)."""
    if isinstance(user_ids, pa.Table):
        if "user_id" not in user_ids.column_names:
            raise ValueError(f"user_ids table needs a user_id column, got {', '.join(user_ids.column_names)}")
        user_ids = user_ids.column("user_id")
    if isinstance(user_ids, (pa.Array, pa.ChunkedArray)):
        if not pa.types.is_integer(user_ids.type) or user_ids.null_count:
            raise ValueError(f"user_ids must be integers without nulls, got {user_ids.type} "
                             f"with {user_ids.null_count} null(s)")
        return np.asarray(user_ids.cast(pa.int64()).to_numpy(zero_copy_only=False))
    ids = np.asarray(user_ids)
    if ids.ndim == 1 and ids.size == 0:  # an empty list has no integer dtype: no users
        return np.zeros(0, np.int64)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"user_ids must be a 1-D array of integers, got {ids.dtype} of shape {ids.shape}")
    return ids.astype(np.int64, copy=False)


def query_many(warehouse: Warehouse | str | None, user_ids: Any, *, ds: str | None = None,
               conditions: Sequence[str] | None = None, table: str = TABLE, version: int | None = None,
               as_of: int | str | dt.datetime | None = None) -> pa.Table:
    """Batch lookup: the rows of ``table`` on day ``ds`` for many users (an Arrow table with a ``user_id``
    column, an Arrow or NumPy array, a list) as one Arrow table, sorted by ``user_id`` (rows of one user in
    file order). Duplicates count once; unknown users have no rows. Arguments and errors as ``query_table``.
    Only files and row groups whose ``user_id`` range holds a requested id are read, ``user_id`` first and the
    other columns only for groups with a hit, on every core (``stages.warehouse.scan``); no Python work per
    user or row."""
    _check_table(table, conditions)
    out, _, _ = _read(Warehouse.of(warehouse), table, unique_ids(_user_id_array(user_ids)), conditions, ds, version,
                      as_of)
    users = out.column("user_id").to_numpy()
    if len(users) > 1 and (users[1:] < users[:-1]).any():  # files of another layout: group by user, stable
        out = out.take(pa.array(np.argsort(users, kind="stable")))
    return out


def query_user_knowledge(warehouse: Warehouse | str | None, *, user_ids: Sequence[int], ds: str | None = None,
                         conditions: Sequence[str] | None = None, version: int | None = None,
                         as_of: int | str | dt.datetime | None = None) -> pa.Table:
    """``user_knowledge`` rows (ds, user_id, condition, embedding[D], model_version, history_len,
    condition_logprob, temperature: the last two null or absent for partitions written before they existed);
    ``as_of`` and ``version`` as in ``query_table``."""
    return query_table(warehouse, TABLE, user_ids=user_ids, ds=ds, conditions=conditions, version=version,
                       as_of=as_of)


def _display(value: Any) -> Any:
    if isinstance(value, list) and value and isinstance(value[0], float):
        head = ", ".join(f"{v:.4f}" for v in value[:EMBEDDING_SHOWN])
        return f"[{head}{', ...' if len(value) > EMBEDDING_SHOWN else ''}] (D={len(value)})"
    return value


def cli(args: argparse.Namespace, *, warehouse: Warehouse | str | None) -> dict[str, Any]:
    """``lum query``: print the rows (table or JSON lines) to stdout, return the summary."""
    table_name = getattr(args, "table", TABLE) or TABLE
    as_of = getattr(args, "as_of", None)
    rows = query_table(warehouse, table_name, user_ids=args.user_ids, ds=args.ds,
                       conditions=args.conditions, as_of=as_of)
    records = rows.to_pylist()
    if getattr(args, "format", "table") == "json":
        for rec in records:
            print(json.dumps(rec, default=str))
    elif records:
        print(format_table([{k: _display(v) for k, v in rec.items()} for rec in records]))
    else:
        print(f"(no rows for user_id {', '.join(map(str, args.user_ids))})", file=sys.stderr)
    meta = rows.schema.metadata or {}
    return {"table": table_name, "rows": rows.num_rows, "users": len(set(rows.column("user_id").to_pylist())),
            "ds": meta.get(b"lum.ds", b"").decode() or args.ds, "version": int(meta.get(b"lum.version", b"-1")),
            "as_of": as_of}
