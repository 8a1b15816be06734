"""``lum bench cluster``: maintain's clustering sort (``stages.warehouse.rangesort``) with each spill codec.

Builds one ``user_knowledge`` day in a throwaway warehouse (``stages.bench.query_data``: ``users`` x ``conditions``
rows staged in ``shards`` hash shares, each sorted by user, as a multi-process infer writes them; ``mixed``: user
ids spread over the id space, so every scan batch spans every range, as an unsorted input does), then sorts a
fresh copy of it by ``user_id`` once per entry of ``codecs`` (``none`` first: the baseline), each in a fresh
process (spawned), so no run inherits another's memory.
``unbuffered`` adds an ``lz4`` run that writes every scan batch's piece of a range at once (``SPILL_BATCH_ROWS``
= 1), as the sort did before it held a range's rows for larger compressed writes.
Per run: wall and CPU seconds of the sort (its process, all threads), the spill's peak on disk (the sort's own
count: a window's spill files right after its scan) and that over the sorted partition's parquet bytes, the
peak RSS of its process (imports included), and the ratios to the baseline. Every run must write the same
rows in the same order as the baseline (a digest of the sorted files' ``user_id`` and ``condition`` columns,
file by file); the bench fails otherwise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import multiprocessing
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stages.bench.query_data import TABLE, synthetic_knowledge, write_partition
from stages.warehouse import rangesort
from stages.warehouse.facade import Warehouse

log = logging.getLogger(__name__)

DS = "2000-12-30"
QUICK = {"users": 20_000, "conditions": 4, "sort_mb": 4}
MIX = 0x9E3779B1  # odd: user_id * MIX mod 2^31 is a permutation of [0, 2^31)


@dataclass(frozen=True)
class Config:
    """Options of ``lum bench cluster`` (``--set key=value``)."""

    users: int = 1_000_000  # users of the day
    conditions: int = 16  # rows per user
    dim: int = 16  # embedding width
    shards: int = 4  # hash shares the day is staged in (each sorted by user; their ranges overlap)
    mixed: bool = False  # spread user ids over the id space: every scan batch spans every range
    sort_mb: int = 256  # maintain's sort_mb: the sort's memory, hence its ranges
    codecs: tuple[str, ...] = ("none", "lz4", "zstd")  # spill codecs to run, the first is the baseline
    unbuffered: bool = True  # also run lz4 with every piece written at once
    row_group_rows: int = 8_192
    file_rows: int = 65_536  # rows per staged write
    seed: int = 0

    def check(self) -> None:
        for name in ("users", "conditions", "dim", "shards", "sort_mb", "row_group_rows", "file_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        bad = [c for c in self.codecs if c not in rangesort.SPILL_CODECS]
        if not self.codecs or bad:
            raise ValueError(f"codecs must name some of {', '.join(rangesort.SPILL_CODECS)}, got {list(self.codecs)}")


def _mixed(chunks: Iterator[pa.Table]) -> Iterator[pa.Table]:
    for table in chunks:
        ids = (table.column("user_id").to_numpy() * MIX) & ((1 << 31) - 1)
        yield table.set_column(table.schema.get_field_index("user_id"), "user_id", pa.array(ids, pa.int64()))


def _digest(wh: Warehouse) -> tuple[str, int]:
    """Digest of the sorted partition's (user_id, condition) in file order, and its parquet bytes."""
    files = sorted(wh.delta_table(TABLE).file_uris([("ds", "=", DS)]))
    digest, size = hashlib.sha256(), 0
    for path in files:
        local = path.removeprefix("file://")
        size += os.path.getsize(local)
        pf = pq.ParquetFile(local)
        for g in range(pf.num_row_groups):
            part = pf.read_row_group(g, columns=["user_id", "condition"])
            digest.update(part.column("user_id").to_numpy().tobytes())
            digest.update("\n".join(part.column("condition").to_pylist()).encode())
    return digest.hexdigest(), size


def _peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM (Linux; reset by exec, unlike ru_maxrss, which a spawned child inherits
    from the parent it was forked from), else ru_maxrss."""
    with contextlib.suppress(OSError), open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sort(copy: str, cfg: Config, codec: str, unbuffered: bool) -> dict[str, Any]:
    """One sort of the day at ``copy``, in a fresh process: its wall and CPU seconds, peak RSS and spill."""
    if unbuffered:
        rangesort.SPILL_BATCH_ROWS = 1  # this process only
    cpu0, t0 = time.process_time(), time.perf_counter()
    out = Warehouse(copy).optimize(TABLE, ds=DS, cluster_by="user_id", sort_bytes=cfg.sort_mb << 20,
                                   spill_codec=codec, row_group_rows=cfg.row_group_rows)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {**out, "seconds": seconds, "cpu": cpu, "peak_rss_mb": _peak_rss_mb()}


def _one(source: str, root: str, cfg: Config, codec: str, *, unbuffered: bool) -> dict[str, Any]:
    copy = f"{root}/run"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(source, copy)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        out = pool.submit(_sort, copy, cfg, codec, unbuffered).result()
    if out["rewrite"] != "cluster":
        raise RuntimeError(f"bench cluster: the day was not clustered ({out})")
    digest, size = _digest(Warehouse(copy))
    name = f"{codec}{'_unbuffered' if unbuffered else ''}"
    spill = out["spill_mb"]
    log.info("bench cluster %s: %.1f s wall, %.1f CPU-s, spill peak %.0f MiB", name, out["seconds"], out["cpu"], spill)
    return {"spill": name, "seconds": round(out["seconds"], 2), "cpu_seconds": round(out["cpu"], 2),
            "spill_peak_mb": spill, "spill_x_parquet": round(spill * 2**20 / size, 3),
            "peak_rss_mb": round(out["peak_rss_mb"], 1), "_digest": digest}


def run(cfg: Config, *, warehouse: Warehouse | str | None) -> dict[str, Any]:
    """Build the day, sort a copy of it per codec; returns the report (``table``, ``summary``, ``config``).
    ``warehouse`` is not touched (the bench builds its own)."""
    cfg.check()
    root = tempfile.mkdtemp(prefix="lum-bench-cluster-")
    try:
        source = f"{root}/source"
        t0 = time.perf_counter()
        chunks = synthetic_knowledge(cfg.users, cfg.conditions, cfg.dim, cfg.seed, DS,
                                     chunk_users=max(1, cfg.file_rows // cfg.conditions))
        files = write_partition(Warehouse(source), _mixed(chunks) if cfg.mixed else chunks, DS,
                                row_group_rows=cfg.row_group_rows, file_rows=cfg.file_rows, shards=cfg.shards,
                                file_bytes=128 << 20)
        build_s = time.perf_counter() - t0
        runs = [(c, False) for c in cfg.codecs] + ([("lz4", True)] if cfg.unbuffered else [])
        rows = [_one(source, root, cfg, codec, unbuffered=unbuffered) for codec, unbuffered in runs]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    base, expected = rows[0], rows[0]["_digest"]
    for row in rows:
        if row.pop("_digest") != expected:
            raise RuntimeError(f"bench cluster: spill {row['spill']} wrote other rows than {base['spill']}")
        row["cpu_x_baseline"] = round(row["cpu_seconds"] / base["cpu_seconds"], 3)
        row["spill_x_baseline"] = round(row["spill_peak_mb"] / base["spill_peak_mb"], 3) if base["spill_peak_mb"] else None
    summary = {"rows": cfg.users * cfg.conditions, "baseline": base["spill"], "files_before": files,
               **{f"{r['spill']}_spill_x_parquet": r["spill_x_parquet"] for r in rows},
               **{f"{r['spill']}_cpu_x_baseline": r["cpu_x_baseline"] for r in rows[1:]}}
    return {"table": rows, "summary": summary, "config": dataclasses.asdict(cfg), "build_seconds": round(build_s, 1),
            "cpu_count": os.cpu_count(), "numpy": np.__version__, "pyarrow": pa.__version__}
