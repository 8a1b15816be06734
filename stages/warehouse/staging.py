"""Staged partition writes: many chunks and shards, then ONE commit of partition ``ds``.

    stager = wh.stage_partition("user_knowledge", ds=ds, run_id=run_id, shard="0/2")
    for chunk in chunks: stager.write(chunk)   # validated; parquet under <table>/ds=<ds>/, invisible
    stager.finish()                             # manifest _staging/<table>/<ds>/<run_id>/shard-0-of-2.json
    wh.commit_staged("user_knowledge", ds=ds, run_id=run_id)   # once every shard, on any machine, finished

``commit_staged`` refuses a missing shard manifest, shards that disagree on the shard count, a file outside
partition ``ds``, or a key (``schemas.<table>.KEY``) that is null or appears in more than one row across all
chunks and shards (``stages.warehouse.keys``); one ``run_id`` applies once (app transaction
``lum/<table>/<ds>/<run_id>``). Each chunk is validated (keys unique and non-null within it) when written.
``commit_staged_days`` makes ONE commit of a run staged over many days (a streamed ingest). Each file's
size and Delta stats are recorded as it is written (``stages.warehouse.sidecars``): the commit opens no
parquet footer unless a file's record is missing.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

import schemas
from stages.core.dates import check_ds
from stages.core.phases import phase
from stages.warehouse.commit import (
    DataFile,
    already_committed,
    check_files,
    commit_overwrite,
    commit_partition_files,
    filesystem_for,
)
from stages.warehouse.keys import check_staged_keys, key_range
from stages.warehouse.sidecars import read_sidecars, write_sidecar
from stages.warehouse.stats import FileStats, recorded_stats
from stages.warehouse.store import TableStore

log = logging.getLogger(__name__)

_RUN_ID_RE = re.compile(r"^[A-Za-z0-9_.:+-]{1,200}$")
_SHARD_RE = re.compile(r"^(\d+)/(\d+)$")


def parse_shard(shard: str | None) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n; None -> (0, 1)."""
    if shard is None:
        return 0, 1
    match = _SHARD_RE.match(str(shard))
    if not match or not int(match.group(1)) < int(match.group(2)):
        raise ValueError(f"shard must be 'i/n' with 0 <= i < n, got {shard!r}")
    return int(match.group(1)), int(match.group(2))


def _check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not _RUN_ID_RE.match(run_id):
        raise ValueError(f"run_id must match {_RUN_ID_RE.pattern}, got {run_id!r}")
    return run_id


def staging_dir(wh: TableStore, name: str, ds: str, run_id: str) -> str:
    return f"{wh.uri}/_staging/{name}/{ds}/{run_id.replace(':', '_')}"


def app_id_for(name: str, ds: str, run_id: str) -> str:
    return f"lum/{name}/{ds}/{run_id}"


class PartitionStager:
    """Writes validated chunks of one shard of partition ``ds`` as parquet files, then a manifest.

    ``file_bytes`` None: one file per ``write``. Else a chunk is appended to the open file while the file holds
    less than ``file_bytes`` (Arrow bytes written) and the chunk's first key column starts above the file's
    largest value (sorted appends: no key repeats across a file's chunks, so the commit's key check, which
    trusts each file, stays exact); otherwise the file is closed and the chunk starts the next one. Fewer,
    larger files mean fewer add actions (and, once rewritten, fewer tombstones) for every reader to list."""

    def __init__(self, wh: TableStore, name: str, *, ds: str, run_id: str, shard: str | None = None,
                 dim: int | None = None, file_bytes: int | None = None):
        self.spec = schemas.get(name).SPEC
        if "ds" not in self.spec.partition_by:
            raise ValueError(f"table {name} is not partitioned; stage_partition needs a ds table")
        if file_bytes is not None and file_bytes < 1:
            raise ValueError(f"file_bytes must be >= 1 or None, got {file_bytes}")
        self.wh, self.name, self.ds = wh, name, check_ds(ds)
        self.run_id = _check_run_id(run_id)
        self.shard, self.n_shards = parse_shard(shard)
        self.dim = dim
        self.file_bytes = file_bytes
        self.files: list[dict] = []
        self.rows = 0
        self.finished = False
        self._fs, self._table_path = filesystem_for(wh.table_uri(name))
        self._stage_root = filesystem_for(staging_dir(wh, name, self.ds, self.run_id))[1]
        self._token = uuid.uuid4().hex[:12]  # distinguishes attempts of the same run and shard
        self._open: dict | None = None  # the file being appended to: path, writer, rows, bytes, key range

    def write(self, table: pa.Table, *, row_group_size: int | None = None) -> int:
        """Validate one chunk and write it (a new file, or appended to the open one: see the class); returns
        the rows written.

        ``row_group_size``: rows per parquet row group (None: pyarrow's default); small groups of a
        sorted chunk let a point lookup read one group."""
        if self.finished:
            raise ValueError(f"stager for {self.name} ds={self.ds} shard {self.shard} is already finished")
        data = self.spec.validate(table, ds=self.ds, dim=self.dim)
        if self.dim is None and self.spec.embedding_columns:
            self.dim = self.spec.infer_dim(data)  # later chunks must agree with the first
        if data.num_rows == 0:
            return 0
        lo, hi = key_range(data, self.spec.key[0])
        # delta-rs data files hold no partition column: ds lives in the add action
        body = data.drop_columns(["ds"])
        if self._open is not None and not self._appends(body, lo):
            self._close()
        if self._open is None:
            self._start(body.schema, lo)
        f = self._open
        with phase("staging", f"{self.name} ds={self.ds} file {len(self.files)}"):
            f["writer"].write_table(body, row_group_size=row_group_size)
        f["rows"] += data.num_rows
        f["bytes"] += body.nbytes
        f["key_max"] = hi
        self.rows += data.num_rows
        if self.file_bytes is None:
            self._close()
        return data.num_rows

    def _appends(self, body: pa.Table, lo) -> bool:
        f = self._open
        return (self.file_bytes is not None and f["bytes"] < self.file_bytes and body.schema.equals(f["schema"])
                and lo is not None and f["key_max"] is not None and type(lo) is type(f["key_max"])
                and lo > f["key_max"])

    def _start(self, schema: pa.Schema, lo) -> None:
        relpath = (f"ds={self.ds}/lum-{self.run_id.replace(':', '_')}-s{self.shard}of{self.n_shards}-"
                   f"{self._token}-{len(self.files):05d}.parquet")
        self._fs.create_dir(f"{self._table_path}/ds={self.ds}", recursive=True)
        # float vectors compress nothing into dictionary pages: plain pages are smaller and decode faster
        writer = pq.ParquetWriter(f"{self._table_path}/{relpath}", schema, filesystem=self._fs, compression="zstd",
                                  use_dictionary=[f.name for f in schema if not pa.types.is_list(f.type)
                                                  and not pa.types.is_fixed_size_list(f.type)])
        self._open = {"path": relpath, "writer": writer, "schema": schema, "rows": 0, "bytes": 0,
                      "key_min": lo, "key_max": None}

    def _close(self) -> None:
        """Close the open file; record its size, Delta stats (from the footer as written: the commit needs not
        read it back) and key range."""
        f, self._open = self._open, None
        if f is None:
            return
        with phase("staging", f"{self.name} ds={self.ds} stats {len(self.files)}"):
            f["writer"].close()
            size = self._fs.get_file_info(f"{self._table_path}/{f['path']}").size
            write_sidecar(self._fs, self._stage_root, f["path"], recorded_stats(f["writer"].writer.metadata, size),
                          self._token)
        # the first key column's range lets the commit skip the key check of files no other file overlaps
        self.files.append({"path": f["path"], "rows": f["rows"], "key_min": f["key_min"], "key_max": f["key_max"]})

    def finish(self) -> None:
        """Close the open file, then write this shard's manifest (atomically: temp file + move). Call once,
        after all writes."""
        self._close()
        manifest = {"table": self.name, "ds": self.ds, "run_id": self.run_id, "shard": self.shard,
                    "n_shards": self.n_shards, "rows": self.rows, "dim": self.dim, "files": self.files}
        fs, root = filesystem_for(staging_dir(self.wh, self.name, self.ds, self.run_id))
        fs.create_dir(root, recursive=True)
        target = f"{root}/shard-{self.shard}-of-{self.n_shards}.json"
        tmp = f"{target}.{self._token}.tmp"
        with phase("staging", f"{self.name} ds={self.ds} manifest"):
            with fs.open_output_stream(tmp) as out:
                out.write(json.dumps(manifest).encode())
            fs.move(tmp, target)
        self.finished = True
        log.info("staged %s ds=%s shard %d/%d: %d files, %d rows", self.name, self.ds, self.shard,
                 self.n_shards, len(self.files), self.rows)


def read_manifests(wh: TableStore, name: str, ds: str, run_id: str) -> list[dict]:
    fs, root = filesystem_for(staging_dir(wh, name, ds, run_id))
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    out = []
    for info in sorted(infos, key=lambda i: i.path):
        if info.type == pafs.FileType.File and info.path.endswith(".json"):
            with fs.open_input_stream(info.path) as handle:
                out.append(json.loads(handle.read().decode()))
    return out


def recorded(wh: TableStore, name: str, ds: str, run_id: str, files: Sequence[DataFile]) -> dict[str, FileStats]:
    """The stats the stagers recorded for ``files`` of partition ``ds`` (sidecars; a file without is absent)."""
    fs, root = filesystem_for(staging_dir(wh, name, ds, run_id))
    return read_sidecars(fs, root, [f.relpath for f in files])


def commit_staged(wh: TableStore, name: str, *, ds: str, run_id: str, shards: int | None = None,
                  metadata: dict[str, str] | None = None) -> int:
    """ONE overwrite commit of partition ``ds`` with every shard's files; returns the table version."""
    check_ds(ds)
    _check_run_id(run_id)
    spec = schemas.get(name).SPEC
    app_id = app_id_for(name, ds, run_id)
    manifests = read_manifests(wh, name, ds, run_id)
    counts = {m["n_shards"] for m in manifests} | ({shards} if shards is not None else set())
    if len(counts) > 1:
        raise ValueError(f"table {name} ds={ds} run {run_id}: shard counts disagree: {sorted(counts)}")
    n_shards = counts.pop() if counts else (shards or 1)
    present = {m["shard"] for m in manifests}
    missing = [i for i in range(n_shards) if i not in present]
    if missing:
        if already_committed(wh.table_uri(name), app_id, wh.storage_options or None):
            return wh.version(name)
        raise ValueError(f"table {name} ds={ds} run {run_id}: manifest missing for shard(s) "
                         f"{', '.join(map(str, missing))} of {n_shards}; refusing to commit")
    dims = {m["dim"] for m in manifests if m.get("dim")}
    if len(dims) > 1:
        raise ValueError(f"table {name} ds={ds} run {run_id}: shards disagree on embedding dim "
                         f"{sorted(dims)}")
    if already_committed(wh.table_uri(name), app_id, wh.storage_options or None):
        log.info("%s ds=%s: run %s already committed; nothing to do", name, ds, run_id)
        return wh.version(name)
    files = [DataFile(relpath=f["path"], ds=m["ds"]) for m in manifests for f in m["files"]]
    check_files(files, ds, name)  # before any file is opened
    fs, table_path = filesystem_for(wh.table_uri(name))
    check_staged_keys(fs, table_path, name, spec.key, [f for m in manifests for f in m["files"]],
                      where=f"ds={ds} run {run_id}")
    version, applied = commit_partition_files(
        wh.table_uri(name), name, ds=ds, files=files, schema=spec.build_schema(dims.pop() if dims else 1),
        app_id=app_id, storage_options=wh.storage_options or None, metadata=metadata,
        stats=recorded(wh, name, ds, run_id, files))
    if applied:
        wh.set_table_metadata(name, metadata or {})
        version = wh.version(name)
    return version


def commit_staged_days(wh: TableStore, name: str, *, days: Sequence[str], run_id: str, clear: Sequence[str] = (),
                       metadata: dict[str, str] | None = None) -> int:
    """ONE overwrite commit of partitions ``days`` (every shard of ``run_id`` staged for each) and ``clear``
    (emptied); returns the version. Refuses a day whose shard manifests are missing or incomplete."""
    _check_run_id(run_id)
    days = sorted({check_ds(d) for d in days})
    targets = sorted(set(days) | {check_ds(d) for d in clear})
    if not targets:
        raise ValueError(f"table {name} run {run_id}: commit_staged_days needs at least one day")
    files: list[DataFile] = []
    stats: dict[str, FileStats] = {}
    fs, table_path = filesystem_for(wh.table_uri(name))
    key = schemas.get(name).SPEC.key
    for day in days:
        manifests = read_manifests(wh, name, day, run_id)
        counts = {m["n_shards"] for m in manifests}
        if len(counts) != 1 or {m["shard"] for m in manifests} != set(range(counts.pop())):
            raise ValueError(f"table {name} ds={day} run {run_id}: shard manifests missing or incomplete; "
                             "refusing to commit")
        day_files = [DataFile(relpath=f["path"], ds=m["ds"]) for m in manifests for f in m["files"]]
        check_files(day_files, day, name)
        check_staged_keys(fs, table_path, name, key, [f for m in manifests for f in m["files"]],
                          where=f"ds={day} run {run_id}")
        files += day_files
        stats.update(recorded(wh, name, day, run_id, day_files))
    version, applied = commit_overwrite(
        wh.table_uri(name), name, files=files, schema=schemas.get(name).SPEC.build_schema(1),
        app_id=app_id_for(name, f"{targets[0]}..{targets[-1]}", run_id), storage_options=wh.storage_options or None,
        metadata=metadata, partition_filter=("ds", "in", targets),
        what=f"ds={targets[0]}..{targets[-1]} ({len(targets)} days)", stats=stats)
    if applied:
        wh.set_table_metadata(name, metadata or {})
        version = wh.version(name)
    return version
