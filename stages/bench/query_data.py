"""The synthetic ``user_knowledge`` table of ``lum bench query``: ``days`` partitions of one size, cheaply.

``synthetic_knowledge``: ``users * conditions`` rows sorted by (user_id, condition), odd user ids, vectorised
numpy. ``write_partition``: day D staged as infer stages it (files of ``file_rows`` rows in row groups of
``row_group_rows``; ``shards`` > 1: that many hash shares of the users, each sorted, their ranges overlapping, as
a multi-process infer writes them), one commit. ``link_days``: the other days as hard links of one day's files,
committed in ONE commit with the same per-file statistics: the Delta log holds ``days`` partitions' files (what
every lookup lists) for the disk and time of one. Local warehouses only.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from stages.warehouse.commit import DataFile, add_action, files_stats, filesystem_for
from stages.warehouse.facade import Warehouse

TABLE = "user_knowledge"


def synthetic_knowledge(users: int, conditions: int, dim: int, seed: int, ds: str) -> pa.Table:
    """``users * conditions`` rows sorted by (user_id, condition); user ids 1, 3, 5, ... (odd)."""
    rng = np.random.default_rng(seed)
    n = users * conditions
    user_ids = np.repeat(np.arange(users, dtype=np.int64) * 2 + 1, conditions)
    names = np.array([f"category=c{j:02d}" for j in range(conditions)], dtype=object)
    emb = rng.standard_normal((n, dim), dtype=np.float32)
    return pa.table({
        "ds": pa.array(np.full(n, ds, dtype=object), pa.string()),
        "user_id": pa.array(user_ids),
        "condition": pa.array(np.tile(names, users), pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), dim),
        "model_version": pa.array(np.full(n, "lum-bench", dtype=object), pa.string()),
        "history_len": pa.array(rng.integers(1, 200, n, dtype=np.int32)),
    })


def write_partition(wh: Warehouse, table: pa.Table, ds: str, *, row_group_rows: int, file_rows: int,
                    shards: int = 1) -> int:
    """Stage ``file_rows``-row files of ``row_group_rows``-row groups per shard, then ONE commit; returns files."""
    share = (table.column("user_id").to_numpy() // 2) % shards
    files = 0
    for i in range(shards):
        part = table.filter(pa.array(share == i)) if shards > 1 else table
        stager = wh.stage_partition(TABLE, ds=ds, run_id="bench", shard=f"{i}/{shards}")
        for start in range(0, part.num_rows, file_rows):
            stager.write(part.slice(start, file_rows), row_group_size=row_group_rows)
        stager.finish()
        files += len(stager.files)
    wh.commit_staged(TABLE, ds=ds, run_id="bench", shards=shards)
    return files


def link_days(wh: Warehouse, source: str, days: Sequence[str]) -> int:
    """Partitions ``days`` = hard links of partition ``source``'s files, ONE overwrite commit; returns the version."""
    delta = wh.delta_table(TABLE)
    actions = pa.table(delta.get_add_actions(flatten=True))
    paths = actions.filter(pc.equal(actions.column("partition.ds"), source)).column("path").to_pylist()
    fs, root = filesystem_for(wh.table_uri(TABLE))
    items = [DataFile(relpath=p, ds=source) for p in paths]
    template = [add_action(item, info, stats) for item, (info, stats) in zip(items, files_stats(fs, root, items))]
    added = []
    for day in days:
        os.makedirs(f"{root}/ds={day}", exist_ok=True)
        for action in template:
            rel = f"ds={day}/{os.path.basename(action.path)}"
            os.link(f"{root}/{action.path}", f"{root}/{rel}")
            added.append(dataclasses.replace(action, path=rel, partition_values={"ds": day}))
    delta.create_write_transaction(added, "overwrite", delta.schema(), partition_by=["ds"],
                                   partition_filters=[("ds", "in", list(days))])
    return DeltaTable(wh.table_uri(TABLE)).version()
