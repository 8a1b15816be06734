"""``lum run maintain --ds D``: keep the tables of day D fast to read and the warehouse from growing without end.

For each table of ``tables`` (``stages.maintain.plan`` checks the Config first; nothing changes on bad input):
1. expire: delete its partitions older than ``D - keep_days.<table>`` in one commit (0, the default: none);
2. rewrite partition D in at most one commit, rows unchanged: tables in ``cluster`` are sorted by ``user_id``
   (an external range sort in about ``sort_mb`` of memory, its spill compressed by ``spill_codec``,
   ``stages.warehouse.rangesort``, files of ``target_file_mb``, so a lookup opens one file and about one row
   group) when their files overlap or are small; other tables get delta-rs compaction of small files, except a
   bucketed ``user_sequences`` partition (one file per bucket: compaction would mix the buckets readers skip by);
3. vacuum: ``Warehouse.vacuum`` with ``LUM_VACUUM_RETENTION_HOURS`` (files a newer version dropped earlier);
4. then, for every table: the day in its configuration (``lum.maintained_through``: ``lum backfill``'s "done"
   check, ``is_complete``) and a Delta checkpoint with log entries past the log retention removed.
A rerun changes nothing (every step is skipped when there is nothing to do). Missing tables or partitions are
skipped and reported. Summary: per table files before/after, rows of D, rewrite (and a sort's peak spill MiB),
expired days, files vacuumed, seconds.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import schemas
from stages.core.dates import check_ds
from stages.core.settings import vacuum_retention_hours
from stages.maintain.plan import MARKER, PARTITIONED, KeepDays, check_config, days_to_expire, maintained_through
from stages.warehouse import buckets
from stages.warehouse.facade import Warehouse
from stages.warehouse.maintenance import layout

log = logging.getLogger(__name__)

CLUSTER_COLUMN = "user_id"
TABLES = ("user_sequences", "user_knowledge", "item_knowledge", "dlrm_samples", "dlrm_training")


@dataclass(frozen=True)
class Config:
    """Options of ``lum run maintain`` (``[maintain]`` in a config file, ``--set key=value``)."""

    tables: tuple[str, ...] = TABLES  # events only on purpose: rewriting it makes sequences rebuild (README)
    cluster: tuple[str, ...] = ("user_knowledge", "dlrm_training")  # sorted by user_id for lookups
    keep_days: KeepDays = field(default_factory=KeepDays)  # per table, days kept before D; 0 = never expire
    target_file_mb: int = 128  # size of the files a rewrite writes
    row_group_rows: int = 8192  # parquet row group of rewritten files (infer's default): a lookup decodes one
    compression: str = "ZSTD"  # of rewritten files; LZ4_RAW: bigger files, faster batch lookups (README)
    sort_mb: int = 256  # memory of a clustering sort (a range of user_ids at a time, the rest spilled to disk)
    spill_codec: str = "lz4"  # of that spill: lz4 (about 1.3x the partition's parquet size), zstd, none (1.9x)
    vacuum: bool = True  # delete files older versions needed, after LUM_VACUUM_RETENTION_HOURS
    checkpoint: bool = True  # a Delta checkpoint per table, expired log entries removed


def _check_cluster_columns(cfg: Config) -> None:
    for name in cfg.cluster:
        if CLUSTER_COLUMN not in schemas.get(name).SPEC.build_schema(1).names:
            raise ValueError(f"cluster: table {name} has no {CLUSTER_COLUMN} column")


def maintain_table(wh: Warehouse, cfg: Config, name: str, ds: str, retention: int | None) -> dict[str, Any]:
    """Steps 1-3 for one table; returns its summary row."""
    started = time.perf_counter()
    if not wh.exists(name):
        return {"table": name, "missing": True, "files_before": 0, "files_after": 0, "rows": 0, "rewrite": "none",
                "partitions_expired": [], "files_vacuumed": 0, "seconds": 0.0}
    expired = wh.expire(name, days_to_expire(wh.partitions(name), ds, getattr(cfg.keep_days, name)))
    if name == buckets.TABLE and ds in wh.partitions(name) and buckets.layout(wh, ds).reason is None:
        part = layout(wh, name, ds)  # one file per bucket, kept as it is
        rewrite = {"files_before": part.files, "files_after": part.files, "rows": part.rows, "rewrite": "none"}
    else:
        rewrite = wh.optimize(name, ds=ds, cluster_by=CLUSTER_COLUMN if name in cfg.cluster else None,
                              target_size=cfg.target_file_mb << 20, row_group_rows=cfg.row_group_rows,
                              compression=cfg.compression, sort_bytes=cfg.sort_mb << 20,
                              spill_codec=cfg.spill_codec)
    vacuumed = wh.vacuum(name, retention_hours=retention) if retention is not None else []
    return {"table": name, "missing": False, **rewrite, "partitions_expired": expired,
            "files_vacuumed": len(vacuumed), "seconds": round(time.perf_counter() - started, 3)}


def finish_table(wh: Warehouse, cfg: Config, name: str, ds: str) -> None:
    """Step 4: record ``ds`` (only forward, so a rerun of an older day changes nothing) and checkpoint."""
    through = maintained_through(wh.table_metadata(name))
    if through is None or through < ds:
        wh.set_table_metadata(name, {MARKER: ds})
    if cfg.checkpoint:
        wh.checkpoint(name)


def is_complete(warehouse: Warehouse | str, ds: str) -> bool:
    """Whether maintenance finished for day ``ds``: some table records a day, and every such table >= ``ds``."""
    wh = Warehouse.of(warehouse)
    days = [maintained_through(wh.table_metadata(name)) for name in PARTITIONED if wh.exists(name)]
    days = [d for d in days if d is not None]
    return bool(days) and min(days) >= ds


def run(cfg: Config, *, ds: str, warehouse: Warehouse | str | None) -> dict[str, Any]:
    """Maintain every table of ``cfg.tables`` for day ``ds``; returns the summary."""
    check_ds(ds)
    check_config(cfg)
    _check_cluster_columns(cfg)
    retention = vacuum_retention_hours() if cfg.vacuum else None  # a bad setting fails before any change
    wh = Warehouse.of(warehouse)
    rows = [maintain_table(wh, cfg, name, ds, retention) for name in cfg.tables]
    for row in rows:
        if not row["missing"]:
            started = time.perf_counter()
            finish_table(wh, cfg, row["table"], ds)
            row["seconds"] = round(row["seconds"] + time.perf_counter() - started, 3)
    for row in rows:
        log.info("maintain %s ds=%s: %s", row["table"], ds, row)
    return {"tables": rows,
            "files_before": sum(r["files_before"] for r in rows), "files_after": sum(r["files_after"] for r in rows),
            "partitions_expired": sum(len(r["partitions_expired"]) for r in rows),
            "files_vacuumed": sum(r["files_vacuumed"] for r in rows)}
