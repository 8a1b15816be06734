"""The synthetic ``user_knowledge`` table of ``lum bench query``: ``days`` partitions of one size, cheaply.

``synthetic_knowledge``: ``users * conditions`` rows sorted by (user_id, condition), odd user ids, vectorised
numpy, yielded in chunks of users (memory holds one chunk, so 10M users x 16 conditions stream through).
``write_partition``: day D staged as infer stages it (writes of ``file_rows`` rows in row groups of
``row_group_rows``, sharing files up to ``file_bytes``; ``shards`` > 1: that many hash shares of the users, each
sorted, their ranges overlapping, as a multi-process infer writes them), one commit. ``link_days``: the other days as hard links of one day's files,
committed in ONE commit with the same per-file statistics: the Delta log holds ``days`` partitions' files (what
every lookup lists) for the disk and time of one. Local warehouses only.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from stages.warehouse.commit import DataFile, add_action, files_stats, filesystem_for
from stages.warehouse.facade import Warehouse

TABLE = "user_knowledge"


def synthetic_knowledge(users: int, conditions: int, dim: int, seed: int, ds: str,
                        chunk_users: int = 65_536) -> Iterator[pa.Table]:
    """``users * conditions`` rows sorted by (user_id, condition), ``chunk_users`` users a table; user ids 1, 3,
    5, ... (odd). Chunk k draws from its own generator (seed, k)."""
    names = np.array([f"category=c{j:02d}" for j in range(conditions)], dtype=object)
    for k, first in enumerate(range(0, users, chunk_users)):
        rng = np.random.default_rng([seed, k])
        count = min(chunk_users, users - first)
        n = count * conditions
        user_ids = np.repeat(np.arange(first, first + count, dtype=np.int64) * 2 + 1, conditions)
        emb = rng.standard_normal((n, dim), dtype=np.float32)
        yield pa.table({
            "ds": pa.array(np.full(n, ds, dtype=object), pa.string()),
            "user_id": pa.array(user_ids),
            "condition": pa.array(np.tile(names, count), pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), dim),
            "model_version": pa.array(np.full(n, "lum-bench", dtype=object), pa.string()),
            "history_len": pa.array(rng.integers(1, 200, n, dtype=np.int32)),
        })


def write_partition(wh: Warehouse, chunks: Iterable[pa.Table], ds: str, *, row_group_rows: int, file_rows: int,
                    shards: int = 1, file_bytes: int | None = None) -> int:
    """Stage ``file_rows``-row writes of ``row_group_rows``-row groups per shard from sorted ``chunks`` (each shard
    buffers less than a write; ``file_bytes``: consecutive writes share files of that size, as infer's
    ``file_mb``), then ONE commit; returns the number of files."""
    stagers = [wh.stage_partition(TABLE, ds=ds, run_id="bench", shard=f"{i}/{shards}", file_bytes=file_bytes)
               for i in range(shards)]
    pending: list[list[pa.Table]] = [[] for _ in range(shards)]

    def flush(i: int, final: bool) -> None:
        part = pa.concat_tables(pending[i]) if pending[i] else None
        pending[i] = []
        while part is not None and (part.num_rows >= file_rows or (final and part.num_rows)):
            stagers[i].write(part.slice(0, file_rows), row_group_size=row_group_rows)
            part = part.slice(file_rows) if part.num_rows > file_rows else None
        if part is not None and part.num_rows:
            pending[i] = [part]

    for table in chunks:
        share = (table.column("user_id").to_numpy() // 2) % shards
        for i in range(shards):
            pending[i].append(table.filter(pa.array(share == i)) if shards > 1 else table)
            if sum(t.num_rows for t in pending[i]) >= file_rows:
                flush(i, final=False)
    for i in range(shards):
        flush(i, final=True)
        stagers[i].finish()
    wh.commit_staged(TABLE, ds=ds, run_id="bench", shards=shards)
    return sum(len(st.files) for st in stagers)


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
