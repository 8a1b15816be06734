"""Stage 2 of LUM: query the pretrained model with condition tokens -> ``user_knowledge`` and ``item_knowledge``.

``run(cfg, ds=D)`` loads the newest model version trained through D (or ``cfg.model_version``), reads
partition D of ``user_sequences`` (one pinned Delta snapshot) in chunks of ``chunk_users`` users in user_id
order (``infer_batching.user_ordered_chunks``: streamed when the files are already in order, else one
local spill by user_id range), and for every user encodes its last ``max_len - 1`` behaviours
(``ModelConfig.history_len``) ``[c1, i1, ..., cL, iL]`` plus N query condition tokens (``stages.core.conditions``),
packed into forwards of at most ``token_budget`` tokens:

- ``grouped`` (default): ``model.encode_grouped``: the history once per user; each condition token attends
  to the history and itself through ``kernels.grouped_query_attention`` in every layer. ~2L + N tokens/user.
- ``naive`` (the baseline): one forward per condition, history + that single condition token: N (2L + 1)
  tokens/user. It calls ``encode_grouped`` with one query per user, whose mask is then exactly plain causal
  attention, so both modes share the attention implementation and the bench measures only the grouping.
  Both give the same o_q up to float rounding; tests also match them against the training path
  (``encode_packed``, block-diagonal causal SDPA) on history + (c_q, any item).

Outputs (partition D, one Delta commit per table, nothing visible before it):
- ``user_knowledge``: one row per (user, condition), one file per chunk, sorted by user_id, files covering
  disjoint user_id ranges, ``row_group_rows`` rows per parquet row group with min/max statistics, so a point
  lookup reads one row group per file it opens; ``history_len`` = behaviours the model saw (<= max_len - 1,
  stages.model.lum.ModelConfig.history_len).
  Memory: one chunk (``chunk_users`` x N x D floats, 4096 x 18 x 64 x 4 B = 19 MB) plus the partition's
  user_id column (8 B/user).
- ``item_knowledge``: e_i of every item of the model vocabulary (``model.item_embeddings``).

Edge cases (counted in the summary, never a crash or a NaN row):
- users with no history (history_len 0) are skipped (``users_skipped_empty``); users for whom the
  condition set is empty (``top:K`` with no category in the history) are skipped (``users_skipped_no_conditions``).
- history items unknown to the model map to its OOV row (``history_oov_items`` counts them); items of the
  ``items`` table not in the model vocabulary get NO item_knowledge row (``items_not_in_model``): the OOV
  row is shared by all of them and carries no item information, so ``join`` leaves their LUM columns null.
- a model whose condition features differ from the condition strings in ``user_sequences`` (a model from
  another config), or a model trained after D, is a one-line ValueError before anything is written.
- every chunk is validated before it is staged: NaN/Inf embeddings or a width other than the model's
  ``meta["dim"]`` raise ValueError, so the run fails before its commit and the old partition stays.

Scale-out: ``shard="i/n"`` (or RANK/WORLD_SIZE under torchrun) processes users whose splitmix64(user_id)
% n == i and items whose hash % n == i, stages its files and writes a shard manifest; nothing is visible.
Publishing is explicit: ``shard="commit/n"`` (``lum run infer --ds D --shard commit/n``) commits every
shard's files in ONE commit per table and refuses while a manifest is missing. Under torchrun the ranks
meet at a gloo barrier and rank 0 commits. All shards of one run must share ``run_id``: by default it is a
hash of (ds, model version, user_sequences Delta version, mode, conditions, n), so ``--shard i/n``
invocations and the commit step agree without coordination; a rerun of a shard rewrites its manifest;
committing an already committed run is a no-op (same inputs, same content); new inputs give a new run_id.
An unsharded run uses a fresh run_id and commits at its end, so a rerun always replaces the partition.
item_knowledge is committed before user_knowledge (two tables, two commits: a crash between them leaves
the new items with the old users, both from committed runs).
Staged files of a run that never commits are invisible; ``Warehouse.vacuum`` removes them.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from stages.core.conditions import ConditionSet, parse_spec
from stages.infer.chunks import (
    JaggedBatch,
    ShardSpec,
    build_batch,
    pack_by_budget,
    parse_shard,
    shard_of,
    user_ordered_chunks,
)

log = logging.getLogger(__name__)

SEQUENCE_COLUMNS = ["user_id", "item_ids", "conditions", "history_len"]


@dataclass(frozen=True)
class Config:
    mode: str = "grouped"  # "grouped" (history once, N queries attend to it) or "naive" (one forward per condition)
    shard: str | None = None  # "i/n": this process's hash-share of users; "commit/n": publish all shards
    model_version: str | None = None  # pin a model version; None = newest trained through ds
    conditions: str = "all"  # "all" | "top:K" | "list:C1;C2" (see stages.core.conditions)
    condition_feature: str = "category"  # the feature that "all" and "top:K" enumerate
    with_features: str = ""  # e.g. "scenario=rating": merged into every condition (multi-condition queries)
    token_budget: int = 16384  # tokens per forward; bounds activation memory (~30 MB at d_model 64, 2 layers)
    chunk_users: int = 4096  # users per staged file: memory bound and file size (~4096 x 18 rows)
    row_group_rows: int = 8192  # parquet row group size: a point lookup reads ~one group (~2 MB at D=64)
    device: str = "auto"  # "auto" = cuda when available, else cpu
    run_id: str | None = None  # shared by all shards of one run; None = derived (see module docstring)


# ---- model-facing helpers ----------------------------------------------------------------------------

def resolve_version(warehouse: str, ds: str, pinned: str | None) -> str:
    """The model version to use: ``pinned`` (must exist and be trained through <= ds) or the newest."""
    from stages.model import store as model_store

    if pinned:
        return pinned
    version = model_store.latest_version(warehouse, through=ds)
    if version is None:
        raise ValueError(f"no LUM model trained through {ds} in {warehouse}/models/lum; run `lum run pretrain` first")
    return version


def check_model(loaded: Any, version: str, ds: str) -> int:
    """Refuse a model that cannot serve partition ds; returns the output width D."""
    meta = loaded.meta
    through = str(meta.get("through_ds", ""))
    if through and through > ds:
        raise ValueError(f"model_version {version} was trained through {through}, after ds {ds} (would leak the future)")
    dim = meta.get("dim")
    if not isinstance(dim, int) or dim <= 0:
        raise ValueError(f"model_version {version}: meta dim must be a positive int, got {dim!r}")
    return dim


def check_condition_features(vocab: Any, history_conditions: list[str], version: str) -> None:
    """A model from another config (other condition features) must not silently map everything to <unk>."""
    from stages.core.conditions import condition_to_features

    for cond in history_conditions[:50]:
        names = tuple(condition_to_features(cond))
        if names != tuple(vocab.features):
            raise ValueError(f"model_version {version} expects condition features {','.join(vocab.features)}, "
                             f"but user_sequences has condition {cond!r} (a model from a different config)")


def encode(model: Any, batch: JaggedBatch, mode: str) -> Any:
    """(sum N_b, D) float32 outputs o_q for one jagged batch, in user-then-condition order."""
    import torch

    with torch.inference_mode():
        if mode == "grouped":
            return model.encode_grouped(batch.hist_item_rows, batch.hist_cond_ids, batch.cu_hist,
                                        batch.query_cond_ids, batch.cu_queries).float()
        return encode_naive(model, batch)


def encode_naive(model: Any, batch: JaggedBatch) -> Any:
    """Baseline: for j = 0..max N-1, one forward of every user that has a j-th condition with its full
    history plus that single condition token (plain causal attention; the history is recomputed N times)."""
    import torch

    cu_q = batch.cu_queries.tolist()
    cu_h = batch.cu_hist.tolist()
    n_q = [cu_q[b + 1] - cu_q[b] for b in range(len(cu_q) - 1)]
    out = None
    for j in range(max(n_q)):
        users = [b for b, n in enumerate(n_q) if n > j]
        hist_idx = torch.cat([torch.arange(cu_h[b], cu_h[b + 1]) for b in users]).to(batch.hist_item_rows.device)
        lens = torch.tensor([cu_h[b + 1] - cu_h[b] for b in users], dtype=torch.int64)
        cu_hist = torch.zeros(len(users) + 1, dtype=torch.int32)
        cu_hist[1:] = torch.cumsum(lens, 0).to(torch.int32)
        q_pos = torch.tensor([cu_q[b] + j for b in users], dtype=torch.int64)
        cu_one = torch.arange(len(users) + 1, dtype=torch.int32)
        dev = batch.hist_item_rows.device
        o = model.encode_grouped(batch.hist_item_rows[hist_idx], batch.hist_cond_ids[hist_idx], cu_hist.to(dev),
                                 batch.query_cond_ids[q_pos.to(dev)], cu_one.to(dev)).float()
        if out is None:
            out = o.new_empty((cu_q[-1], o.shape[1]))
        out[q_pos.to(o.device)] = o
    return out


def check_embeddings(emb: np.ndarray, dim: int, *, what: str) -> None:
    """Refuse NaN/Inf or a wrong width before anything is staged (so nothing is ever committed)."""
    if emb.ndim != 2 or emb.shape[1] != dim:
        raise ValueError(f"{what}: embedding has shape {tuple(emb.shape)}, expected (n, {dim}) from the model meta dim")
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        raise ValueError(f"{what}: {int(bad.sum())} embedding(s) contain NaN/Inf; first rows {np.flatnonzero(bad)[:5].tolist()}")


def embedding_array(emb: np.ndarray) -> pa.FixedSizeListArray:
    """(n, D) float32 -> fixed_size_list<float32>[D] without a copy per row."""
    flat = pa.array(np.ascontiguousarray(emb, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, emb.shape[1])


# ---- reading ---------------------------------------------------------------------------------------

def sequences_snapshot(warehouse: str, ds: str) -> tuple[Any, int]:
    """(pyarrow dataset of partition ds of user_sequences, the Delta version read): one pinned snapshot."""
    from stages.warehouse.facade import Warehouse

    wh = Warehouse.of(warehouse)
    if ds not in wh.partitions("user_sequences"):
        raise ValueError(f"user_sequences has no partition ds={ds}; run `lum run sequences --ds {ds}` first")
    table = wh.delta_table("user_sequences")
    return table.to_pyarrow_dataset(partitions=[("ds", "=", ds)]), table.version()


# ---- one chunk of users ----------------------------------------------------------------------------

@dataclass
class ChunkStats:
    users: int = 0
    rows: int = 0
    skipped_empty: int = 0
    skipped_no_conditions: int = 0
    history_oov_items: int = 0
    tokens: int = 0


def user_conditions(cset: ConditionSet, fixed: list[str] | None, history: list[str],
                    features: tuple[str, ...]) -> list[str]:
    return fixed if fixed is not None else cset.for_user(history, features)


def process_chunk(chunk: pa.Table, *, model: Any, vocab: Any, cset: ConditionSet, fixed: list[str] | None,
                  cfg: Config, dim: int, ds: str, version: str, max_history: int | None,
                  device: str, stats: ChunkStats) -> pa.Table | None:
    """Users of one chunk (any order) -> user_knowledge rows sorted by (user_id, condition order)."""
    chunk = chunk.sort_by("user_id")
    user_ids = chunk.column("user_id").to_numpy()
    item_lists = chunk.column("item_ids").to_pylist()
    cond_lists = chunk.column("conditions").to_pylist()
    fixed_ids = None if fixed is None else np.asarray([vocab.condition_id(q) for q in fixed], dtype=np.int64)
    keep_uid, hist_items, hist_conds, query_ids, query_names, hist_lens = [], [], [], [], [], []
    for uid, items, conds in zip(user_ids.tolist(), item_lists, cond_lists):
        items, conds = items or [], conds or []
        if not items:
            stats.skipped_empty += 1
            continue
        if max_history is not None and len(items) > max_history:
            items, conds = items[-max_history:], conds[-max_history:]
        queries = user_conditions(cset, fixed, conds, tuple(vocab.features))
        if not queries:
            stats.skipped_no_conditions += 1
            continue
        rows = vocab.item_rows(np.asarray(items, dtype=np.int64))
        stats.history_oov_items += int((rows == 0).sum())
        keep_uid.append(uid)
        hist_items.append(rows)
        hist_conds.append(vocab.condition_ids(conds))
        query_ids.append(fixed_ids if queries is fixed else
                         np.asarray([vocab.condition_id(q) for q in queries], dtype=np.int64))
        query_names.append(queries)
        hist_lens.append(len(items))
    stats.users += len(keep_uid)
    if not keep_uid:
        return None
    per_user = [2 * h + len(q) for h, q in zip(hist_lens, query_ids)] if cfg.mode == "grouped" else \
        [len(q) * (2 * h + 1) for h, q in zip(hist_lens, query_ids)]
    # naive forwards one condition at a time, so its budget is per condition: scale it to stay comparable
    budget = cfg.token_budget if cfg.mode == "grouped" else cfg.token_budget * max(len(q) for q in query_ids)
    pieces = []
    for users in pack_by_budget(per_user, budget):
        batch = build_batch(users, hist_items, hist_conds, query_ids, device=device)
        stats.tokens += batch.n_tokens
        pieces.append(encode(model, batch, cfg.mode).cpu().numpy())
    emb = np.concatenate(pieces, axis=0)
    check_embeddings(emb, dim, what=f"user_knowledge ds={ds} users {keep_uid[0]}..{keep_uid[-1]}")
    n_per = [len(q) for q in query_names]
    stats.rows += int(sum(n_per))
    return pa.table({
        "ds": pa.array([ds] * len(emb), pa.string()),
        "user_id": pa.array(np.repeat(np.asarray(keep_uid, dtype=np.int64), n_per)),
        "condition": pa.array([c for q in query_names for c in q], pa.string()),
        "embedding": embedding_array(emb),
        "model_version": pa.array([version] * len(emb), pa.string()),
        "history_len": pa.array(np.repeat(np.asarray(hist_lens, dtype=np.int32), n_per)),
    })


def item_rows_table(model: Any, vocab: Any, *, dim: int, ds: str, version: str,
                    shard: ShardSpec | None) -> pa.Table:
    """item_knowledge rows: every item of the model vocabulary (this shard's hash share), sorted by item_id."""
    import torch

    ids = np.asarray(vocab.item_ids, dtype=np.int64)
    keep = np.ones(len(ids), dtype=bool) if shard is None else shard_of(ids, shard.count) == shard.index
    ids = ids[keep]
    rows = vocab.item_rows(ids)
    with torch.inference_mode():
        emb = model.item_embeddings(torch.from_numpy(rows)).float().cpu().numpy() if len(rows) else \
            np.zeros((0, dim), dtype=np.float32)
    check_embeddings(emb, dim, what=f"item_knowledge ds={ds}")
    return pa.table({
        "ds": pa.array([ds] * len(ids), pa.string()),
        "item_id": pa.array(ids),
        "embedding": embedding_array(emb),
        "model_version": pa.array([version] * len(ids), pa.string()),
    })


def items_not_in_model(warehouse: str, vocab: Any) -> int:
    """Items of the items table that the model has no row for (they get no item_knowledge row)."""
    from stages.warehouse.facade import Warehouse

    wh = Warehouse.of(warehouse)
    if not wh.exists("items"):
        return 0
    ids = wh.read("items", columns=["item_id"]).column("item_id").to_numpy()
    return int((vocab.item_rows(ids) == 0).sum())


# ---- the stage -------------------------------------------------------------------------------------

def default_run_id(ds: str, version: str, sequences_version: int, cfg: Config, shard: ShardSpec | None) -> str:
    """Unsharded: unique per invocation (a rerun always commits). Sharded: shared by every shard of one
    logical run without coordination: a hash of (ds, model version, user_sequences Delta version, mode,
    conditions, n). Same inputs -> same content, so a rerun whose commit was already applied is a no-op;
    new inputs (a re-sequenced day, another model) -> a new run_id, and ``commit/n`` refuses while any
    shard of the new run is missing."""
    if cfg.run_id:
        return cfg.run_id
    if shard is None:
        return f"infer-{ds}-{uuid.uuid4().hex[:12]}"
    key = "|".join(str(x) for x in (ds, version, sequences_version, cfg.mode, cfg.conditions,
                                     cfg.condition_feature, cfg.with_features, shard.count))
    return f"infer-{ds}-n{shard.count}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _validate_cfg(cfg: Config) -> None:
    if cfg.mode not in ("grouped", "naive"):
        raise ValueError(f"mode must be grouped or naive, got {cfg.mode!r}")
    for name in ("token_budget", "chunk_users", "row_group_rows"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def commit(warehouse: str, ds: str, run_id: str, shards: int | None) -> dict[str, int]:
    """One commit per table with every shard's staged files (item_knowledge first, user_knowledge last)."""
    from stages.warehouse.facade import Warehouse

    wh = Warehouse.of(warehouse)
    return {name: wh.commit_staged(name, ds=ds, run_id=run_id, shards=shards)
            for name in ("item_knowledge", "user_knowledge")}


def run(cfg: Config, *, ds: str, warehouse: str) -> dict[str, Any]:
    """Infer partition ds; returns a summary (rows, users/s, skipped counts, versions)."""
    from stages.core.dates import check_ds

    check_ds(ds)
    _validate_cfg(cfg)
    started = time.perf_counter()
    shard = parse_shard(cfg.shard)
    version = resolve_version(warehouse, ds, cfg.model_version)
    dataset, seq_version = sequences_snapshot(warehouse, ds)
    run_id = default_run_id(ds, version, seq_version, cfg, shard)
    if shard is not None and shard.commit:
        versions = commit(warehouse, ds, run_id, shard.count)
        return {"stage": "infer", "ds": ds, "shard": shard.label, "model_version": version, "run_id": run_id,
                "versions": versions, "seconds": round(time.perf_counter() - started, 3)}
    summary = infer_partition(cfg, ds=ds, warehouse=warehouse, version=version, dataset=dataset,
                              run_id=run_id, shard=shard)
    if shard is None:
        summary["versions"] = commit(warehouse, ds, run_id, None)
    elif cfg.shard is None:  # rank of a torchrun job
        summary["versions"] = _torchrun_commit(warehouse, ds, run_id, shard)
    else:
        summary["next"] = f"lum run infer --ds {ds} --shard commit/{shard.count} --model-version {version}"
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary


def infer_partition(cfg: Config, *, ds: str, warehouse: str, version: str, dataset: Any, run_id: str,
                    shard: ShardSpec | None) -> dict[str, Any]:
    """Stage this process's user_knowledge and item_knowledge files and manifests (no commit)."""
    from stages.core.progress import Progress
    from stages.model import store as model_store
    from stages.warehouse.facade import Warehouse

    device = _device(cfg.device)
    loaded = model_store.load(warehouse, version, device=device)
    model, vocab = loaded.model, loaded.vocab
    dim = check_model(loaded, version, ds)
    max_history = model.cfg.history_len  # max_len - 1: the positions training reaches (ModelConfig.history_len)
    cset = parse_spec(cfg.conditions, feature=cfg.condition_feature, with_features=cfg.with_features)
    fixed = None if cset.per_user else cset.fixed(vocab.conditions[1:], vocab.features)
    for c in fixed or []:
        vocab.condition_id(c)  # every query condition must be known to the model: fail before any work
    wh = Warehouse.of(warehouse)
    shard_arg = None if shard is None else f"{shard.index}/{shard.count}"
    total = int(dataset.count_rows())
    progress = Progress("infer", total if shard is None else max(1, total // shard.count), unit="users")
    stats = ChunkStats()
    user_stager = wh.stage_partition("user_knowledge", ds=ds, run_id=run_id, shard=shard_arg, dim=dim)
    seen, checked, last_max = 0, False, None
    for chunk in user_ordered_chunks(dataset, SEQUENCE_COLUMNS, cfg.chunk_users, shard):
        seen += chunk.num_rows
        if not checked:
            check_condition_features(vocab, [c[0] for c in chunk.column("conditions").to_pylist()[:50] if c], version)
            checked = True
        uids = chunk.column("user_id").to_numpy()
        if last_max is not None and int(uids.min()) <= last_max:  # guards the ordering invariant
            raise ValueError(f"user_sequences ds={ds}: chunks out of user_id order at user {int(uids.min())}")
        last_max = int(uids.max())
        out = process_chunk(chunk, model=model, vocab=vocab, cset=cset, fixed=fixed, cfg=cfg, dim=dim, ds=ds,
                            version=version, max_history=max_history, device=device, stats=stats)
        if out is not None:
            user_stager.write(out, row_group_size=cfg.row_group_rows)
        progress.update(chunk.num_rows)
    user_stager.finish()

    item_stager = wh.stage_partition("item_knowledge", ds=ds, run_id=run_id, shard=shard_arg, dim=dim)
    items = item_rows_table(model, vocab, dim=dim, ds=ds, version=version, shard=shard)
    item_stager.write(items, row_group_size=cfg.row_group_rows)
    item_stager.finish()
    elapsed = progress.done()
    return {
        "stage": "infer", "ds": ds, "mode": cfg.mode, "model_version": version, "run_id": run_id,
        "shard": None if shard is None else shard.label, "conditions": cfg.conditions,
        "n_conditions": None if fixed is None else len(fixed), "dim": dim,
        "users_read": seen, "users": stats.users, "rows": stats.rows, "item_rows": items.num_rows,
        "users_skipped_empty": stats.skipped_empty, "users_skipped_no_conditions": stats.skipped_no_conditions,
        "history_oov_items": stats.history_oov_items, "items_not_in_model": items_not_in_model(warehouse, vocab),
        "tokens": stats.tokens, "users_per_s": round(stats.users / max(elapsed, 1e-9), 1),
    }


def _torchrun_commit(warehouse: str, ds: str, run_id: str, shard: ShardSpec) -> dict[str, int] | None:
    """Under torchrun: every rank has finished its manifest at the barrier; rank 0 commits."""
    import torch.distributed as dist

    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo")
    try:
        dist.barrier()
        versions = commit(warehouse, ds, run_id, shard.count) if shard.index == 0 else None
        dist.barrier()
        return versions
    finally:
        if created:
            dist.destroy_process_group()
