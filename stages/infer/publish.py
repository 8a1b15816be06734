"""How infer output becomes visible: run ids shared by shards, item_knowledge rows, one commit per table.

Every process stages its files and a shard manifest (``Warehouse.stage_partition``); nothing is visible
until ``commit`` publishes every shard's files in ONE commit per table, item_knowledge before
user_knowledge (a crash between the two leaves the new items with the old users, both from committed runs).
Under torchrun the ranks meet at a gloo barrier and rank 0 commits. Committing an already committed run is
a no-op; ``commit_staged`` refuses while a shard's manifest is missing.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist

from stages.core.phases import phase
from stages.infer.chunks import ShardSpec, shard_of
from stages.infer.encode import check_embeddings, embedding_array
from stages.warehouse.facade import Warehouse

TABLES = ("item_knowledge", "user_knowledge")  # commit order


def default_run_id(ds: str, version: str, sequences_version: int, shard: ShardSpec | None, *,
                   pinned: str | None, query: tuple[str, ...]) -> str:
    """``pinned`` when given. Unsharded: unique per invocation (a rerun always commits). Sharded: shared by
    every shard of one logical run without coordination: a hash of (ds, model version, user_sequences Delta
    version, ``query`` (mode and condition options), n). Same inputs -> same content, so a rerun whose commit
    was already applied is a no-op; new inputs (a re-sequenced day, another model) -> a new run_id, and
    ``commit/n`` refuses while any shard of the new run is missing."""
    if pinned:
        return pinned
    if shard is None:
        return f"infer-{ds}-{uuid.uuid4().hex[:12]}"
    key = "|".join(str(x) for x in (ds, version, sequences_version, *query, shard.count))
    return f"infer-{ds}-n{shard.count}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def item_rows_table(model: Any, vocab: Any, *, dim: int, ds: str, version: str,
                    shard: ShardSpec | None, drift: np.ndarray | None = None) -> pa.Table:
    """item_knowledge rows: every item of the model vocabulary (this shard's hash share), sorted by item_id.
    ``drift`` (n_item_rows, W) multi-hot buckets as of the query day (time-aware models,
    ``Popularity.item_features``): the embedding is [e_i, the item's row of it], the partner of
    user_knowledge's [o, T * drift weights]."""
    ids = np.asarray(vocab.item_ids, dtype=np.int64)
    keep = np.ones(len(ids), dtype=bool) if shard is None else shard_of(ids, shard.count) == shard.index
    ids = ids[keep]
    rows = vocab.item_rows(ids)
    with torch.inference_mode():
        emb = model.item_embeddings(torch.from_numpy(rows)).float().cpu().numpy() if len(rows) else \
            np.zeros((0, dim - (0 if drift is None else drift.shape[1])), dtype=np.float32)
    if drift is not None:
        emb = np.concatenate([emb, drift[rows]], axis=1)
    check_embeddings(emb, dim, what=f"item_knowledge ds={ds}")
    return pa.table({
        "ds": pa.array([ds] * len(ids), pa.string()),
        "item_id": pa.array(ids),
        "embedding": embedding_array(emb),
        "model_version": pa.array([version] * len(ids), pa.string()),
    })


def items_not_in_model(wh: Warehouse, vocab: Any) -> int:
    """Items of the items table that the model has no row for: they share its OOV row, which carries no item
    information, so they get no item_knowledge row (and ``join`` leaves their LUM columns null)."""
    if not wh.exists("items"):
        return 0
    ids = wh.read("items", columns=["item_id"]).column("item_id").to_numpy()
    return int((vocab.item_rows(ids) == 0).sum())


def commit(wh: Warehouse, ds: str, run_id: str, shards: int | None) -> dict[str, int]:
    """One commit per table with every shard's staged files (item_knowledge first, user_knowledge last)."""
    with phase("infer_publish", f"ds={ds} run {run_id}"):
        return {name: wh.commit_staged(name, ds=ds, run_id=run_id, shards=shards) for name in TABLES}


def torchrun_commit(wh: Warehouse, ds: str, run_id: str, shard: ShardSpec) -> dict[str, int] | None:
    """Under torchrun: every rank has finished its manifest at the barrier; rank 0 commits."""
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo")
    try:
        dist.barrier()
        versions = commit(wh, ds, run_id, shard.count) if shard.index == 0 else None
        dist.barrier()
        return versions
    finally:
        if created:
            dist.destroy_process_group()
