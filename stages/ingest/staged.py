"""Streamed ingest writes: ``events`` and ``dlrm_samples`` rows staged per day, ONE commit per table per run.

A source hands rows over batch by batch (``FactWriter.add``); ``DayStager`` buffers them per day and writes a day
through ``Warehouse.stage_partition`` once it holds ``file_rows`` rows (every day once the buffer holds
``buffer_rows``), so memory is bounded by the buffer, not by the data set. Staged files stay invisible until
``commit`` makes ONE commit per table (``Warehouse.commit_staged_days``) replacing the days staged and emptying
the days in ``clear``; ``discard`` deletes every file and manifest a table has not committed, so a run that fails
before its commits leaves the warehouse as it was. Every staged chunk is validated against ``schemas/``; keys
are unique per chunk by that check, and ``check_keys`` re-checks a day whose rows went into several files before
anything is committed (``stages.warehouse.keys.check_staged_keys``: key columns only, in passes of a bounded
number of keys, so a day of any size fits).
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

import schemas
from stages.ingest.tables import FACT_TABLES
from stages.warehouse.commit import filesystem_for
from stages.warehouse.facade import Warehouse
from stages.warehouse.keys import check_staged_keys
from stages.warehouse.staging import staging_dir

log = logging.getLogger(__name__)

SORT_KEYS = {"events": [("ts", "ascending"), ("event_idx", "ascending")],
             "dlrm_samples": [("ts", "ascending"), ("user_id", "ascending"), ("item_id", "ascending")]}
FILE_ROWS = 1_000_000  # rows per staged file when a source gives no batch size
BUFFER_FILES = 4  # rows buffered over all days before every day is written: BUFFER_FILES * file_rows


class DayStager:
    """Rows of one ds-partitioned table, buffered per day and staged as files of run ``run_id``."""

    def __init__(self, wh: Warehouse, name: str, *, run_id: str, file_rows: int | None = None):
        self.wh, self.name, self.run_id = wh, name, run_id
        self.file_rows = file_rows or FILE_ROWS
        self.buffer_rows = BUFFER_FILES * self.file_rows
        self.buffers: dict[str, list[pa.Table]] = {}
        self.buffered: dict[str, int] = {}
        self.stagers: dict[str, Any] = {}  # day -> PartitionStager
        self.rows = 0
        self.committed = False
        self._fs, self._root = filesystem_for(wh.table_uri(name))
        self._new_dirs = [d for d in (self._root,) if not self._exists(d)]  # removed again by discard

    def _exists(self, path: str) -> bool:
        return self._fs.get_file_info(path).type != pafs.FileType.NotFound

    def add(self, table: pa.Table) -> None:
        """Buffer ``table`` (rows of any days, with ``ds``); write the days whose buffers are full."""
        if table.num_rows == 0:
            return
        # One gather per day into buffers of its own (a stable order: rows keep their order within a day). Slices
        # of one sorted copy would keep the whole batch alive until its last day is written.
        order = pc.sort_indices(table, [("ds", "ascending")])
        counts = pc.value_counts(table.column("ds"))  # days in order of appearance: sorted below, like ``order``
        counts = counts.take(pc.sort_indices(counts.field("values")))
        offset = 0
        for day, n in zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()):
            self.buffers.setdefault(day, []).append(table.take(order.slice(offset, n)))
            self.buffered[day] = self.buffered.get(day, 0) + n
            offset += n
        self.rows += table.num_rows
        for day in [d for d, n in self.buffered.items() if n >= self.file_rows]:
            self._write(day)
        if sum(self.buffered.values()) >= self.buffer_rows:
            for day in list(self.buffers):
                self._write(day)

    def _write(self, day: str) -> None:
        chunk = pa.concat_tables(self.buffers.pop(day)).sort_by(SORT_KEYS[self.name])
        self.buffered.pop(day)
        if day not in self.stagers:
            folder = f"{self._root}/ds={day}"
            if not self._exists(folder):
                self._new_dirs.append(folder)
            self.stagers[day] = self.wh.stage_partition(self.name, ds=day, run_id=self.run_id)
        self.stagers[day].write(chunk)

    @property
    def days(self) -> list[str]:
        return sorted(set(self.stagers) | set(self.buffers))

    def finish(self, *, check_keys: bool) -> None:
        """Write every buffer, re-check keys across files (``check_keys``), write the manifests."""
        for day in list(self.buffers):
            self._write(day)
        if check_keys:
            key = schemas.get(self.name).SPEC.key
            for day, stager in sorted(self.stagers.items()):
                check_staged_keys(self._fs, self._root, self.name, key, stager.files, where=f"ds={day} of this ingest")
        for stager in self.stagers.values():
            stager.finish()

    def commit(self, clear: list[str]) -> int:
        """ONE commit: the staged days replace their partitions, the other days of ``clear`` are emptied."""
        version = self.wh.commit_staged_days(self.name, days=sorted(self.stagers), run_id=self.run_id, clear=clear)
        self.committed = True
        try:
            self._remove_manifests()  # applied: the manifests are spent
        except OSError as exc:
            log.warning("could not remove the manifests of %s run %s (%s)", self.name, self.run_id, exc)
        return version

    def discard(self) -> None:
        """Delete the staged files and manifests (nothing when committed) and the folders this run created."""
        if self.committed:
            return
        try:
            for stager in self.stagers.values():
                for f in stager.files:
                    self._fs.delete_file(f"{self._root}/{f['path']}")
            self._remove_manifests()
            for folder in reversed(self._new_dirs):
                if self._exists(folder) and not self._fs.get_file_info(pafs.FileSelector(folder, recursive=True)):
                    self._fs.delete_dir(folder)
        except OSError as exc:  # never mask the error that made the run discard; vacuum removes leftovers
            log.warning("could not remove staged files of %s run %s (%s); Warehouse.vacuum will", self.name,
                        self.run_id, exc)

    def _remove_manifests(self) -> None:
        for day in self.stagers:
            fs, path = filesystem_for(staging_dir(self.wh, self.name, day, self.run_id))
            fs.delete_dir_contents(path, missing_dir_ok=True)
            for folder in [path.rsplit("/", k)[0] for k in range(4)]:  # run, day, table, _staging folders
                if self._empty_dir(fs, folder):
                    fs.delete_dir(folder)

    @staticmethod
    def _empty_dir(fs: pafs.FileSystem, folder: str) -> bool:
        info = fs.get_file_info(folder)
        return info.type == pafs.FileType.Directory and not fs.get_file_info(pafs.FileSelector(folder))


class FactWriter:
    """``events`` and ``dlrm_samples`` of one ingest run: staged while the source streams, committed at the end."""

    def __init__(self, wh: Warehouse, run_id: str, *, file_rows: int | None = None):
        self.wh = wh
        self.tables = {name: DayStager(wh, name, run_id=run_id, file_rows=file_rows) for name in FACT_TABLES}

    def add(self, events: pa.Table, samples: pa.Table) -> None:
        self.tables["events"].add(events)
        self.tables["dlrm_samples"].add(samples)

    def finish(self, *, check_keys: bool) -> None:
        for stager in self.tables.values():
            stager.finish(check_keys=check_keys)

    def commit(self, *, replace_all: bool) -> dict[str, int]:
        """ONE commit per table; each replaces the days of ``events`` (``replace_all``: every old day too)."""
        days = self.tables["events"].days
        versions = {}
        for name, stager in self.tables.items():
            clear = sorted(set(days) | (set(self.wh.partitions(name)) if replace_all else set()))
            versions[name] = stager.commit(clear)
        return versions

    def discard(self) -> None:
        for stager in self.tables.values():
            stager.discard()

    def summary(self, source: str, *, items: int, users: int, versions: dict[str, int], started: float,
                built: float, finished: float) -> dict[str, Any]:
        """The JSON-able ingest summary (the keys ``stages.ingest.tables.ingest`` returns)."""
        days = self.tables["events"].days
        out = {"source": source, "events": self.tables["events"].rows, "items": items, "users": users,
               "dlrm_samples": self.tables["dlrm_samples"].rows, "days": len(days),
               "first_ds": days[0] if days else None, "last_ds": days[-1] if days else None,
               "versions": versions, "build_seconds": round(built - started, 3),
               "write_seconds": round(finished - built, 3)}
        log.info("ingest %s: %d events over %d days, %d items, %d users (stream %.1fs, commit %.1fs)", source,
                 out["events"], out["days"], items, users, out["build_seconds"], out["write_seconds"])
        return out
