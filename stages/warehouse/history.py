"""Going back in a table's history: which version a timestamp means, whether an old version can still be
read, and which commit's custom metadata describes a partition.

An old version is readable while (a) its log entries exist: delta-rs drops commits older than the table's
``delta.logRetentionDuration`` (delta-rs default: 30 days) when it writes a checkpoint; and (b) every data
file it names exists: ``Warehouse.vacuum`` deletes files a newer version dropped more than its retention ago
(``LUM_VACUUM_RETENTION_HOURS``, default 168). A timestamp resolves through the commit history (the newest
version whose commit timestamp is at or before it), not through ``DeltaTable.load_as_version(datetime)``,
which loads the oldest version for a time before the table's first commit instead of failing.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
from deltalake import DeltaTable

from stages.core.settings import vacuum_retention_hours
from stages.warehouse.commit import filesystem_for
from stages.warehouse.store import TableStore

LOG_RETENTION_KEY = "delta.logRetentionDuration"
LOG_RETENTION_DEFAULT = "interval 30 days"  # delta-rs' default when the table does not set it
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_AS_OF_HELP = "a table version (an integer) or an ISO 8601 timestamp such as 2026-11-26T10:00:00Z"


def parse_as_of(as_of: int | str | dt.datetime) -> int | dt.datetime:
    """A version (int >= 0) or a timezone-aware datetime (naive means UTC); ValueError otherwise.

    Strings of digits are versions; other strings must be ISO 8601 with a time (a bare day is refused: it
    reads like a partition day, which ``ds`` selects).
    """
    if isinstance(as_of, bool):
        raise ValueError(f"as_of must be {_AS_OF_HELP}, got {as_of!r}")
    if isinstance(as_of, int):
        if as_of < 0:
            raise ValueError(f"as_of version must be >= 0, got {as_of}")
        return as_of
    if isinstance(as_of, dt.datetime):
        return as_of if as_of.tzinfo is not None else as_of.replace(tzinfo=dt.UTC)
    if not isinstance(as_of, str):
        raise ValueError(f"as_of must be {_AS_OF_HELP}, got {as_of!r}")
    text = as_of.strip()
    if re.fullmatch(r"\d+", text):
        return int(text)
    if not re.match(r"^\d{4}-\d{2}-\d{2}[T ]\d", text):
        raise ValueError(f"as_of must be {_AS_OF_HELP}, got {as_of!r}")
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"as_of must be {_AS_OF_HELP}, got {as_of!r}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def commit_time(millis: int) -> str:
    """A commit timestamp (ms since the epoch) as ISO 8601 UTC."""
    when = _EPOCH + dt.timedelta(milliseconds=int(millis))
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def log_retention(table: DeltaTable) -> str:
    """The table's ``delta.logRetentionDuration`` (the delta-rs default when unset)."""
    return dict(table.metadata().configuration).get(LOG_RETENTION_KEY, LOG_RETENTION_DEFAULT)


def version_at(store: TableStore, name: str, when: dt.datetime) -> int:
    """The newest version of ``name`` committed at or before ``when``; ValueError when ``when`` precedes
    the first commit (or the oldest one the log still holds)."""
    table = store.delta_table(name)
    commits = [(int(h["version"]), int(h["timestamp"])) for h in table.history()
               if h.get("timestamp") is not None and h.get("version") is not None]
    at_us = (when - _EPOCH) // dt.timedelta(microseconds=1)
    before = [v for v, ms in commits if ms * 1000 <= at_us]
    if before:
        return max(before)
    oldest, millis = min(commits)
    text = when.isoformat().replace("+00:00", "Z")
    if oldest == 0:
        raise ValueError(f"table {name}: {text} is before its first commit (version 0 at {commit_time(millis)})")
    raise ValueError(f"table {name}: {text} is before the oldest commit its log still holds (version {oldest} "
                     f"at {commit_time(millis)}; {LOG_RETENTION_KEY} = {log_retention(table)})")


def resolve_as_of(store: TableStore, name: str, as_of: int | str | dt.datetime) -> int:
    """The version ``as_of`` names in table ``name`` (a version is checked to exist)."""
    value = parse_as_of(as_of)
    if isinstance(value, int):
        store.delta_table(name, value)  # ValueError naming the valid range
        return value
    return version_at(store, name, value)


def last_vacuum(table: DeltaTable) -> str:
    """``"last vacuum <time> kept <h> h"`` from the newest VACUUM START commit, or ``"no vacuum in the log"``."""
    for entry in table.history():
        if entry.get("operation") == "VACUUM START":
            millis = (entry.get("operationParameters") or {}).get("specifiedRetentionMillis")
            kept = f"{int(millis) / 3_600_000:g} h" if millis not in (None, "") else "the table default"
            return f"last vacuum at {commit_time(entry['timestamp'])} kept {kept}"
    return "no vacuum in the log"


def _paths(table: DeltaTable, days: list[str] | None) -> list[str]:
    actions = pa.table(table.get_add_actions(flatten=True))
    if days is not None and "partition.ds" in actions.column_names:
        actions = actions.filter(pc.is_in(actions.column("partition.ds"), value_set=pa.array(days, pa.string())))
    return sorted(actions.column("path").to_pylist())


def check_readable(store: TableStore, name: str, version: int, *, days: list[str] | None = None) -> None:
    """ValueError unless version ``version`` of ``name`` loads and every data file of partitions ``days``
    (all when None) still exists; the message names the table, the version and the retention settings."""
    table = store.delta_table(name, version)
    fs, root = filesystem_for(store.table_uri(name))
    paths = _paths(table, days)
    full = [p if "://" in p or p.startswith("/") else f"{root}/{p}" for p in paths]
    infos = fs.get_file_info(full) if full else []
    gone = [p for p, info in zip(paths, infos) if info.type != pafs.FileType.File]
    if gone:
        latest = store.delta_table(name)
        raise ValueError(f"table {name} version {version}: {len(gone)} data file(s) are gone (e.g. {gone[0]}): "
                         f"vacuum removed them (LUM_VACUUM_RETENTION_HOURS = {vacuum_retention_hours()}; "
                         f"{last_vacuum(latest)}); version {version} can no longer be read")


def partition_record(store: TableStore, name: str, ds: str, key: str) -> tuple[int, dict[str, Any]] | None:
    """(version, record) of the newest commit of ``name`` whose custom metadata ``key`` (a JSON object with
    a ``days`` list) names ``ds``; None when no commit in the log does.

    ValueError when partition ``ds`` holds other files now than right after that commit (a later writer
    replaced it without a record), so a returned record always describes the partition's current content;
    files rewritten by maintenance only (``rearranged_only``) keep the record.
    """
    table = store.delta_table(name)
    for entry in table.history():
        raw = entry.get(key)
        if raw is None:
            continue
        record = json.loads(raw) if isinstance(raw, str) else raw
        if ds in record.get("days", ()):
            version = int(entry["version"])
            break
    else:
        return None
    if _paths(table, [ds]) != _paths(store.delta_table(name, version), [ds]) and not rearranged_only(
            store, name, ds, version):
        raise ValueError(f"table {name}: partition ds={ds} was replaced after version {version} (the last commit "
                         f"recording {key} for it) by a commit that records none")
    return version, record


def rearranged_only(store: TableStore, name: str, ds: str, version: int) -> bool:
    """Whether every commit after ``version`` that added or removed files of partition ``ds`` did so with
    ``dataChange: false`` (compaction and clustering: same rows, other files). False when a commit's log entry
    is gone (past the log retention) or unreadable: the rows can then not be shown unchanged."""
    fs, root = filesystem_for(store.table_uri(name))
    for v in range(version + 1, store.delta_table(name).version() + 1):
        try:
            with fs.open_input_stream(f"{root}/_delta_log/{v:020d}.json") as handle:
                lines = handle.read().decode().splitlines()
        except (OSError, FileNotFoundError):
            return False
        for line in filter(None, (text.strip() for text in lines)):
            action = json.loads(line)
            change = action.get("add") or action.get("remove")
            if change and (change.get("partitionValues") or {}).get("ds") == ds and change.get("dataChange", True):
                return False
    return True
