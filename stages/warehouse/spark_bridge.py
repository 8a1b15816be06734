"""The Spark bridge: Spark reads and writes the data files, delta-rs makes every Delta commit.

- ``read_spark``: the snapshot's files, listed by delta-rs, read by Spark; ``ds`` is joined back on
  ``_metadata.file_path``, each file's key qualified by Hadoop's ``Path`` in the JVM (the Delta log, the disk
  and Spark escape paths differently).
- ``write_spark_partition`` / ``write_spark_partitions``: Spark writes ``partitionBy("ds")`` parquet into a
  fresh, invisible ``<table>/spark-<uuid>/``; the driver refuses any file outside the given days and makes
  ONE overwrite commit of exactly those days (``stages.warehouse.commit``). A failure before the commit
  deletes the folder; with ``app_id`` a retried write that already committed is a no-op.
The DataFrame is cast to the schema's types, and before the commit ``check_written_keys`` refuses a null or
duplicated key (``schemas.<table>.KEY`` within each day) in what Spark wrote. The written files' footers are read
once: the caller's ``check`` (rows per day, null counts: ``WrittenCheck``) and the commit's stats use them.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Sequence
from functools import reduce

import pyarrow as pa
import pyarrow.fs as pafs

import schemas
from stages.core.dates import check_ds
from stages.core.phases import phase
from stages.warehouse.commit import (
    DataFile,
    already_committed,
    check_present,
    commit_days_files,
    files_stats,
    filesystem_for,
)
from stages.warehouse.stats import FileStats
from stages.warehouse.store import TableStore

log = logging.getLogger(__name__)


def _spark_path_key(spark, path: str) -> str:
    """The string Spark reports in ``_metadata.file_path`` for ``path`` (qualified, URI-escaped)."""
    jvm = spark._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = hpath.getFileSystem(spark._jsc.hadoopConfiguration())
    return _normalize_key(fs.makeQualified(hpath).toUri().toString())


def _normalize_key(key: str) -> str:
    """Hadoop spells local URIs ``file:///x`` or ``file:/x`` depending on the call: use ``file:/x``."""
    return re.sub(r"^file:/+", "file:/", key)


WrittenCheck = Callable[[Sequence[tuple[DataFile, FileStats]]], None]  # raises ValueError: nothing is committed

_SAFE_REL = re.compile(r"^[A-Za-z0-9._=/-]+$")  # relative paths Hadoop leaves unescaped


def snapshot_files(wh: TableStore, name: str, *, ds: str | None = None, start: str | None = None,
                   end: str | None = None, version: int | None = None) -> list[tuple[str, str | None]]:
    """(path relative to the table root, ds) of every file in the selected partitions of the snapshot.

    ``ds`` is None for an unpartitioned table (then ds/start/end must be None).
    """
    table = wh.delta_table(name, version)
    actions = pa.table(table.get_add_actions(flatten=True))
    paths = actions.column("path").to_pylist()
    if "partition.ds" not in actions.column_names:
        if ds is not None or start is not None or end is not None:
            raise ValueError(f"table {name} is not partitioned by ds; read it without ds/start/end")
        return [(rel, None) for rel in paths]
    out = []
    for rel, day in zip(paths, actions.column("partition.ds").to_pylist()):
        if ds is not None and day != ds or start is not None and day < start or end is not None and day > end:
            continue
        out.append((rel, day))
    return out


def read_spark(wh: TableStore, spark, name: str, *, ds: str | None = None, start: str | None = None,
               end: str | None = None, version: int | None = None):
    """A DataFrame over the snapshot's files (partitions ``ds`` or ``start..end``), ``ds`` restored.

    Columns are in the table schema's order and Spark types (``schemas.<name>.spark_schema()``).
    Unpartitioned tables (items, users) are read whole. Cost: one py4j call for the table root plus
    one per file whose relative path needs escaping (delta-rs and Spark names need none), and one batched
    stat of the files (a file the log names but storage lacks: ``ValueError`` naming it).
    """
    # deferred: pyspark loads the JVM bridge; lum query and DAG parsing never need it
    from pyspark.sql import functions as F

    for value, label in ((ds, "ds"), (start, "start"), (end, "end")):
        if value is not None:
            check_ds(value, name=label)
    struct = schemas.get(name).spark_schema()
    data_struct = type(struct)([f for f in struct.fields if f.name != "ds"])
    files = snapshot_files(wh, name, ds=ds, start=start, end=end, version=version)
    if not files:
        return spark.createDataFrame([], struct)
    root = wh.table_uri(name)
    check_present(root, name, [rel for rel, _ in files])  # Spark's own error would come later, as a traceback
    data = spark.read.schema(data_struct).parquet(*[f"{root}/{rel}" for rel, _ in files])
    if files[0][1] is None:  # unpartitioned: no ds to restore
        return data.select(*[F.col(f.name).cast(f.dataType) for f in struct.fields])
    root_key = _spark_path_key(spark, root)
    keys = [(f"{root_key}/{rel}" if _SAFE_REL.match(rel) else _spark_path_key(spark, f"{root}/{rel}"), day)
            for rel, day in files]
    mapping = spark.createDataFrame(keys, "lum_file_path string, ds string")
    key = F.regexp_replace(F.col("_metadata.file_path"), "^file:/+", "file:/")  # as _normalize_key
    data = data.select("*", key.alias("lum_file_path"))
    joined = data.join(F.broadcast(mapping), on="lum_file_path", how="inner")
    return joined.select(*[F.col(f.name).cast(f.dataType) for f in struct.fields])


def conform(df, name: str, ds: str):
    """``df`` with ``ds`` filled when absent, cast to the schema's Spark types, in schema order."""
    # deferred: pyspark loads the JVM bridge; lum query and DAG parsing never need it
    from pyspark.sql import functions as F

    struct = schemas.get(name).spark_schema()
    if "ds" not in df.columns:
        df = df.withColumn("ds", F.lit(ds))
    names = [f.name for f in struct.fields]
    for column in schemas.get(name).SPEC.optional:  # omitted optional columns are null (as in validate)
        if column not in df.columns:
            df = df.withColumn(column, F.lit(None))
    unknown = [c for c in df.columns if c not in names]
    if unknown:
        raise ValueError(f"{name}: unknown column(s) {', '.join(unknown)}; expected {', '.join(names)}")
    missing = [c for c in names if c not in df.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {', '.join(missing)}")
    return df.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in struct.fields])


def _list_written(fs: pafs.FileSystem, folder: str, folder_rel: str) -> list[DataFile]:
    """Parquet files Spark wrote under ``folder``, each with the ds of its ``ds=...`` directory."""
    out = []
    for info in fs.get_file_info(pafs.FileSelector(folder, recursive=True, allow_not_found=True)):
        base = info.base_name
        if info.type != pafs.FileType.File or base.startswith((".", "_")):
            continue
        rel = info.path[len(folder) + 1:]
        dirs = [p for p in rel.split("/")[:-1] if p.startswith("ds=")]
        day = dirs[-1][3:] if dirs else ""
        out.append(DataFile(relpath=f"{folder_rel}/{rel}", ds=day))
    return sorted(out, key=lambda f: f.relpath)


def write_spark_partition(wh: TableStore, name: str, df, *, ds: str, app_id: str | None = None,
                          metadata: dict[str, str] | None = None,
                          commit_metadata: dict[str, str] | None = None, check: WrittenCheck | None = None) -> int:
    """Write ``df`` (Spark) as partition ``ds`` of table ``name`` with ONE delta-rs commit.

    ``app_id``: names this write; if the table already records it, nothing is written and the current
    version is returned (a retried task does not apply twice). Returns the table version. ``metadata`` goes
    to the table configuration and the commit, ``commit_metadata`` to the commit's custom metadata only.
    ``check`` sees every written file with its footer stats before the commit; its error commits nothing.
    """
    spec = _partitioned_spec(name)
    check_ds(ds)
    return _write_days(wh, name, conform(df, name, ds), spec=spec, days=[ds], label=ds, app_id=app_id,
                       metadata=metadata, commit_metadata=commit_metadata, check=check)


def write_spark_partitions(wh: TableStore, name: str, df, *, days: Sequence[str], app_id: str | None = None,
                           metadata: dict[str, str] | None = None,
                           commit_metadata: dict[str, str] | None = None, check: WrittenCheck | None = None) -> int:
    """Write a many-day ``df`` (Spark, with a ``ds`` column) as partitions ``days`` in ONE commit.

    All days of the call become visible together or none does (a day in ``days`` without rows ends up
    empty); one commit rather than one per day, so a failure never leaves half of the days new. A file
    whose ds is not in ``days`` is refused. ``app_id``, ``metadata``, ``commit_metadata`` and ``check`` as in
    write_spark_partition (the app transaction is ``lum/<name>/<first>..<last>/<app_id>``). Returns the version.
    """
    spec = _partitioned_spec(name)
    days = sorted({check_ds(d) for d in days})
    if not days:
        raise ValueError(f"table {name}: write_spark_partitions needs at least one day in days")
    if "ds" not in df.columns:
        raise ValueError(f"table {name}: write_spark_partitions needs a ds column in the DataFrame")
    return _write_days(wh, name, conform(df, name, days[0]), spec=spec, days=days,
                       label=f"{days[0]}..{days[-1]}", app_id=app_id, metadata=metadata,
                       commit_metadata=commit_metadata, check=check)


def _partitioned_spec(name: str):
    spec = schemas.get(name).SPEC
    if "ds" not in spec.partition_by:
        raise ValueError(f"table {name} is not partitioned; a Spark partition write needs a ds table")
    return spec


def _write_days(wh: TableStore, name: str, conformed, *, spec, days: list[str], label: str,
                app_id: str | None, metadata: dict[str, str] | None,
                commit_metadata: dict[str, str] | None = None, check: WrittenCheck | None = None) -> int:
    """Spark writes ``conformed`` into a fresh ``spark-<uuid>/`` folder, then ONE commit replacing ``days``.

    Records the app transaction ``lum/<name>/<label>/<app_id or a fresh id>``; with ``app_id`` a write already
    recorded is skipped before Spark runs. A failure before or in the commit, or a commit skipped because a
    concurrent retry recorded the transaction first, deletes the folder (the table is unchanged).
    """
    table_uri = wh.table_uri(name)
    txn = f"lum/{name}/{label}/{app_id or 'spark-' + uuid.uuid4().hex}"
    if app_id is not None and already_committed(table_uri, txn, wh.storage_options or None):
        log.info("%s ds=%s: app_id %s already committed; nothing to do", name, label, app_id)
        return wh.version(name)
    spark = conformed.sparkSession
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")  # what delta-rs reads
    fs, table_path = filesystem_for(table_uri)
    folder_rel = f"spark-{uuid.uuid4().hex}"
    folder = f"{table_path}/{folder_rel}"
    target = folder if "://" not in table_uri else f"{table_uri}/{folder_rel}"
    try:
        writer = conformed.write.mode("errorifexists").partitionBy("ds")
        for column in _vector_columns(conformed.schema):  # a dictionary of float values saves nothing, costs time
            writer = writer.option(f"parquet.enable.dictionary#{column}.list.element", "false")
        with phase("spark_write", f"{name} ds={label}"):
            writer.parquet(target)
        written = _list_written(fs, folder, folder_rel)
        stats = {f.relpath: st for f, (_, st) in zip(written, files_stats(fs, table_path, written))}  # footers, once
        if written:
            check_written_keys(spark, target, name)
        if check is not None:
            check([(f, stats[f.relpath]) for f in written])
        version, applied = commit_days_files(table_uri, name, days=days, files=written,
                                             schema=spec.build_schema(1), app_id=txn,
                                             storage_options=wh.storage_options or None,
                                             metadata={**(metadata or {}), **(commit_metadata or {})}, stats=stats)
    except BaseException:
        _remove_quietly(fs, folder)
        raise
    if applied:
        wh.set_table_metadata(name, metadata or {})
        version = wh.version(name)
    else:
        _remove_quietly(fs, folder)  # a concurrent retry won: our files are not referenced
    return version


def _vector_columns(struct) -> list[str]:
    """Top-level array<float|double> columns (embeddings, similarity lists): written without dictionary pages."""
    # deferred: pyspark loads the JVM bridge; lum query and DAG parsing never need it
    from pyspark.sql import types as T

    return [f.name for f in struct.fields if isinstance(f.dataType, T.ArrayType)
            and isinstance(f.dataType.elementType, T.FloatType | T.DoubleType)]


def check_written_keys(spark, path: str, name: str) -> None:
    """Refuse a null or duplicated key of table ``name`` (within a day) in the parquet Spark wrote under
    ``path`` (its ``ds=<day>/`` folders): ``ValueError`` naming the table, the day and one offending key.

    Cost: one more Spark job that reads only the key columns of the written files (column pruning) and
    shuffles them once (``groupBy(ds, key).count()``, stopping at the first offender); the written DataFrame's
    lineage is not recomputed.
    """
    # deferred: pyspark loads the JVM bridge; lum query and DAG parsing never need it
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    key = list(schemas.get(name).SPEC.key)
    struct = schemas.get(name).spark_schema()
    read_schema = T.StructType([struct["ds"]] + [struct[k] for k in key])  # ds: string, as the folder names
    counts = spark.read.schema(read_schema).parquet(path).groupBy("ds", *key).count()
    bad = counts.filter(reduce(lambda a, b: a | b, [F.col(k).isNull() for k in key], F.col("count") > 1))
    # timestamps printed by Spark in the session's UTC, not converted by Python's local time zone
    shown_cols = [F.col(k).cast("string").alias(k) if isinstance(struct[k].dataType, T.TimestampType) else F.col(k)
                  for k in key]
    rows = bad.select("ds", "count", *shown_cols).limit(1).collect()
    if not rows:
        return
    row = rows[0].asDict()
    shown = ", ".join(f"{k}={row[k]!r}" for k in key)
    nulls = [k for k in key if row[k] is None]
    what = (f"has a null {', '.join(nulls)}" if nulls else f"appears {row['count']} times")
    raise ValueError(f"table {name} ds={row['ds']}: key ({', '.join(key)}) {what}: {shown}; nothing committed")


def _remove_quietly(fs: pafs.FileSystem, folder: str) -> None:
    try:
        fs.delete_dir(folder)
    except (FileNotFoundError, OSError) as exc:  # leftovers are vacuumed later; say so, don't mask the error
        log.warning("could not remove %s (%s); Warehouse.vacuum will", folder, exc)
