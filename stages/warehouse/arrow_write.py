"""Spark rows written by Python tasks: ``write_arrow_days`` makes ONE commit of parquet files that pyarrow wrote.

For outputs computed in Python anyway (``mapInArrow``): each Spark task passes its partition's Arrow batches
through ``fn``, casts them to the table's Arrow types and writes one parquet file per day with pyarrow into a
fresh, invisible ``<table>/arrow-<uuid>/ds=<day>/``, recording each file's ``FileStats`` from the footer it
wrote; the task returns one small row per file. No Spark parquet writer, no Arrow-to-JVM copy of the output.
The driver then, as the Spark bridge does, refuses files outside ``days`` and null or duplicated keys (found by
the tasks themselves when the rows are partitioned by key, else by ``spark_bridge.check_written_keys``), runs
the caller's ``check`` on the files' stats and makes ONE overwrite commit of exactly the reported files (no
footer read). A file no successful task reported (a failed attempt) is deleted first; any failure deletes the
folder, so the table is unchanged.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

import schemas
from stages.core.dates import check_ds
from stages.core.phases import phase
from stages.warehouse.commit import DataFile, commit_days_files, filesystem_for
from stages.warehouse.keys import StreamKeyCheck, show_key
from stages.warehouse.spark_bridge import WrittenCheck, check_written_keys
from stages.warehouse.stats import FileStats, recorded_stats
from stages.warehouse.store import TableStore

log = logging.getLogger(__name__)

Batches = Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]
Tally = Callable[[pa.Table], dict[str, int]]  # counts over rows about to be written, summed over every file
RESULT = "path string, ds string, stats string, bad_key string, tally string"  # one row per written file


def file_schema(name: str) -> pa.Schema:
    """The Arrow types of table ``name``'s data files (no ``ds``; embeddings as list<float>, as Spark writes)."""
    fields = []
    for f in schemas.get(name).SPEC.build_schema(1):
        if f.name == "ds":
            continue
        kind = pa.list_(f.type.value_type) if pa.types.is_fixed_size_list(f.type) else f.type
        fields.append(pa.field(f.name, kind, f.nullable))
    return pa.schema(fields)


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """The parquet column paths worth a dictionary: all but lists of floats or timestamps (embeddings, ratings,
    times: values that seldom repeat), as Spark's writer here leaves them; a list's leaf is ``<name>.list.element``."""
    out = []
    for f in schema:
        if not pa.types.is_list(f.type):
            out.append(f.name)
        elif not (pa.types.is_floating(f.type.value_type) or pa.types.is_timestamp(f.type.value_type)):
            out.append(f"{f.name}.list.element")
    return out


def _write_task(batches: Iterable[pa.RecordBatch], *, fn: Batches | None, table_uri: str, folder_rel: str,
                schema: pa.Schema, key: Sequence[str] | None, tally: Tally | None = None) -> Iterator[pa.RecordBatch]:
    """One Spark task: ``fn``'s batches as one parquet file per day; yields (path, ds, stats JSON, bad key JSON,
    tally JSON) rows. ``key``: also find a null or duplicated key among this task's rows of each day
    (``keys.StreamKeyCheck``: bounded memory when the task's rows come sorted by the key's first column, as the
    join's do). ``tally``: counts over each written piece, summed per file."""
    from pyspark import TaskContext  # deferred: runs in a Spark Python worker

    ctx = TaskContext.get()
    tag = f"{ctx.partitionId():05d}-{ctx.attemptNumber()}-{uuid.uuid4().hex[:8]}" if ctx else uuid.uuid4().hex
    fs, table_path = filesystem_for(table_uri)
    open_files: dict[str, tuple[pq.ParquetWriter, str, list]] = {}
    keys: dict[str, StreamKeyCheck] = {}
    counts: dict[str, Counter] = {}
    try:
        for batch in fn(batches) if fn is not None else batches:
            table = pa.Table.from_batches([batch])
            for day in pc.unique(table.column("ds")).to_pylist():
                part = table.filter(pc.equal(table.column("ds"), day)).select(schema.names).cast(schema)
                if day not in open_files:
                    rel = f"{folder_rel}/ds={day}/part-{tag}.parquet"
                    fs.create_dir(f"{table_path}/{folder_rel}/ds={day}", recursive=True)
                    footer: list[pq.FileMetaData] = []
                    writer = pq.ParquetWriter(f"{table_path}/{rel}", schema, filesystem=fs, compression="snappy",
                                              use_dictionary=dictionary_columns(schema), metadata_collector=footer)
                    open_files[day] = (writer, rel, footer)
                    if key is not None:
                        keys[day] = StreamKeyCheck(key)
                open_files[day][0].write_table(part)
                if key is not None:
                    keys[day].add(part.select(list(key)))
                if tally is not None:
                    counts.setdefault(day, Counter()).update({k: int(n) for k, n in tally(part).items()})
    finally:
        for writer, _, _ in open_files.values():
            writer.close()
    rows = []
    for day, (_, rel, footer) in open_files.items():
        stats = recorded_stats(footer[0], fs.get_file_info(f"{table_path}/{rel}").size)
        bad = keys[day].result() if key is not None else None
        rows.append({"path": rel, "ds": day, "stats": json.dumps(stats.to_json(), allow_nan=False),
                     "bad_key": None if bad is None else json.dumps([bad[0], show_key(bad[1])]),
                     "tally": json.dumps(counts.get(day, {}))})
    yield pa.RecordBatch.from_pylist(rows, schema=pa.schema([("path", pa.string()), ("ds", pa.string()),
                                                             ("stats", pa.string()), ("bad_key", pa.string()),
                                                             ("tally", pa.string())]))


def write_arrow_days(wh: TableStore, name: str, df: Any, fn: Batches | None, *, days: Sequence[str],
                     metadata: dict[str, str] | None = None, commit_metadata: dict[str, str] | None = None,
                     check: WrittenCheck | None = None, keyed: bool = False, tally: Tally | None = None,
                     finish: Callable[[dict[str, int]], dict[str, str]] | None = None) -> int:
    """Write ``fn`` applied to each partition of ``df`` (Spark; ``fn`` None: its rows as they are, which must
    have every column of table ``name`` and a ``ds`` in ``days``) as partitions ``days`` in ONE commit; returns
    the version. ``metadata``, ``commit_metadata`` and ``check`` as in ``spark_bridge.write_spark_partitions``.
    ``keyed``: ``df`` is hash-partitioned so that rows of one key never meet ``fn`` in two tasks; each task then
    checks its own keys (no Spark job over the written key columns). ``tally``: counts the tasks take over the
    rows they write; ``finish`` gets their sums over every file, plus ``rows`` (from the files' stats), after
    the checks and before the commit, and returns more ``metadata`` (its error commits nothing)."""
    days = sorted({check_ds(d) for d in days})
    if not days or "ds" not in schemas.get(name).SPEC.partition_by:
        raise ValueError(f"table {name}: write_arrow_days needs a ds-partitioned table and at least one day")
    table_uri = wh.table_uri(name)
    fs, table_path = filesystem_for(table_uri)
    folder_rel = f"arrow-{uuid.uuid4().hex}"
    key = tuple(schemas.get(name).SPEC.key)
    options = {"fn": fn, "table_uri": table_uri, "folder_rel": folder_rel, "schema": file_schema(name),
               "key": key if keyed else None, "tally": tally}

    def task(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return _write_task(batches, **options)

    label = f"{days[0]}..{days[-1]}" if len(days) > 1 else days[0]
    try:
        with phase("spark_write", f"{name} ds={label}"):
            reported = df.mapInArrow(task, RESULT).collect()
        files = [DataFile(relpath=r["path"], ds=r["ds"]) for r in reported]
        stats = {r["path"]: FileStats.from_json(json.loads(r["stats"])) for r in reported}
        _drop_unreported(fs, f"{table_path}/{folder_rel}", {f"{table_path}/{f.relpath}" for f in files})
        bad = sorted((r["ds"], json.loads(r["bad_key"])) for r in reported if r["bad_key"])
        if bad:
            (day, (what, shown)), *_ = bad
            raise ValueError(f"table {name} ds={day}: key ({', '.join(key)}) {what}: {shown}; nothing committed")
        if files and not keyed:
            check_written_keys(df.sparkSession, f"{table_uri}/{folder_rel}", name)
        if check is not None:
            check([(f, stats[f.relpath]) for f in files])
        if finish is not None:
            sums = Counter(rows=sum(s.stats["numRecords"] for s in stats.values()))
            for r in reported:
                sums.update(json.loads(r["tally"] or "{}"))
            metadata = {**(metadata or {}), **finish(dict(sums))}
        version, applied = commit_days_files(table_uri, name, days=days, files=files,
                                             schema=schemas.get(name).SPEC.build_schema(1),
                                             app_id=f"lum/{name}/{label}/{folder_rel}",
                                             storage_options=wh.storage_options or None,
                                             metadata={**(metadata or {}), **(commit_metadata or {})}, stats=stats)
    except BaseException:
        _remove_quietly(fs, f"{table_path}/{folder_rel}")
        raise
    if applied:
        wh.set_table_metadata(name, metadata or {})
        version = wh.version(name)
    return version


def _drop_unreported(fs: pafs.FileSystem, folder: str, keep: set[str]) -> None:
    """Delete files under ``folder`` that no successful task reported (what a failed attempt left)."""
    for info in fs.get_file_info(pafs.FileSelector(folder, recursive=True, allow_not_found=True)):
        if info.type == pafs.FileType.File and info.path not in keep:
            log.info("removing %s: no successful task wrote it", info.path)
            fs.delete_file(info.path)


def _remove_quietly(fs: pafs.FileSystem, folder: str) -> None:
    try:
        fs.delete_dir(folder)
    except (FileNotFoundError, OSError) as exc:  # leftovers are vacuumed later; say so, don't mask the error
        log.warning("could not remove %s (%s); Warehouse.vacuum will", folder, exc)
