"""Stage 2 of LUM: query the pretrained model with condition tokens -> ``user_knowledge`` and ``item_knowledge``.

``run(cfg, ds=D)`` uses the newest model trained through D (or ``cfg.model_version``) and reads partition D of
``user_sequences`` (one pinned snapshot; a shard opens only its buckets' files, ``chunks.sequence_chunks``) in
user_id-ordered chunks of ``chunk_users``; each user's last
``history_len`` (max_len - 1) behaviours and N query conditions (``stages.core.conditions``) are encoded in
``grouped`` or ``naive`` mode, at most ``token_budget`` tokens per forward. Each table's partition D is
published by one commit (``stages.infer.publish``); ``user_knowledge`` files (consecutive chunks share one up
to ``file_mb``) are user_id-sorted with disjoint ranges and ``row_group_rows``-row groups, so a point lookup
reads about one group.
Every row carries ``condition_logprob`` (log p(condition | history), normalised over the user's conditions, from
the same forward) and ``temperature`` (stages.infer.encode); a model without the next-condition head falls back
to the history-frequency prior, logged and named in the summary (``condition_prior``).
Users skipped and items unknown to the model are counted in the summary, never a crash or a NaN row. A model
trained after D, condition features unlike the sequences' or not all named by the query, or a bad embedding is a
``ValueError`` before anything is written. A ``liked`` model is asked both values (``liked=*``) unless
``with_features`` names ``liked``. ``shard="i/n"`` (or torchrun's RANK/WORLD_SIZE) stages a stable
hash-share of the users and items, ``"commit/n"`` publishes all shards; an unsharded run commits at its end.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import torch

from stages.core import heap
from stages.core.conditions import ANY, FEEDBACK, ConditionSet, condition_to_features, parse_spec
from stages.core.dates import check_ds, day_end, next_day
from stages.core.device import resolve_device
from stages.core.progress import Progress
from stages.infer.chunks import ShardSpec, parse_shard, sequence_chunks
from stages.infer.encode import MODES, ChunkStats, model_temperature, process_chunk
from stages.infer.publish import commit, default_run_id, item_rows_table, items_not_in_model, torchrun_commit
from stages.model import store as model_store
from stages.model.item_popularity import popularity_for
from stages.warehouse.facade import Warehouse

log = logging.getLogger(__name__)

SEQUENCE_COLUMNS = ["user_id", "item_ids", "conditions", "history_len", "ts"]


@dataclass(frozen=True)
class Config:
    mode: str = "grouped"  # "grouped" (history once, N queries attend to it) or "naive" (one forward per condition)
    shard: str | None = None  # "i/n": this process's hash-share of users; "commit/n": publish all shards
    model_version: str | None = None  # pin a model version; None = newest trained through ds
    conditions: str = "all"  # "all" | "top:K" | "list:C1;C2" (see stages.core.conditions)
    condition_feature: str = "category"  # the feature that "all" and "top:K" enumerate
    with_features: str = ""  # e.g. "scenario=rating" merged into every condition; "liked=*": each liked value
    #                          (the default for a model with liked: both values, unless this names liked)
    token_budget: int = 16384  # tokens per forward: bounds activation memory whatever the history lengths
    chunk_users: int = 4096  # users per chunk read and encoded: bounds memory
    file_mb: int = 256  # staged user_knowledge files grow to about this size (Arrow MB; 0: one file per chunk):
    #                     fewer files to list for every lookup, and fewer tombstones once maintain rewrites them
    row_group_rows: int = 8192  # parquet row group size: a point lookup reads about one group
    device: str = "auto"  # "auto" = cuda when available, else cpu
    run_id: str | None = None  # shared by all shards of one run; None = derived (publish.default_run_id)
    threads: int = 0  # > 0: torch.set_num_threads while encoding (1 is fastest on a busy CPU box), restored after


def _validate_cfg(cfg: Config) -> None:
    if cfg.mode not in MODES:
        raise ValueError(f"mode must be grouped or naive, got {cfg.mode!r}")
    if cfg.threads < 0:
        raise ValueError(f"threads must be >= 0 (0 = torch's default), got {cfg.threads}")
    for name in ("token_budget", "chunk_users", "row_group_rows"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.file_mb < 0:
        raise ValueError(f"file_mb must be >= 0 (0: one file per chunk), got {cfg.file_mb}")


# ---- inputs: model version and sequences snapshot -------------------------------------------------

def resolve_version(wh: Warehouse, ds: str, pinned: str | None) -> str:
    """The model version to use: ``pinned`` (checked by ``check_model``) or the newest trained through ds."""
    if pinned:
        return pinned
    version = model_store.latest_version(wh.uri, through=ds)
    if version is None:
        raise ValueError(f"no LUM model trained through {ds} in {wh.uri}/models/lum; run `lum run pretrain` first")
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
    for cond in history_conditions[:50]:
        names = tuple(condition_to_features(cond))
        if names != tuple(vocab.features):
            raise ValueError(f"model_version {version} expects condition features {','.join(vocab.features)}, "
                             f"but user_sequences has condition {cond!r} (a model from a different config)")


def with_feedback(cset: ConditionSet, features: tuple[str, ...]) -> ConditionSet:
    """A model with the feedback feature ``liked`` is asked each of its values (``liked=*``) unless the query
    names ``liked`` itself: taste knowledge holds both what the user would like and what they would not."""
    if FEEDBACK in features and FEEDBACK not in cset.feature_names():
        log.info("infer: the model has condition feature %s: asking %s=%s", FEEDBACK, FEEDBACK, ANY)
        return replace(cset, with_features=(*cset.with_features, (FEEDBACK, (ANY,))))
    return cset


def check_query_features(cset: Any, features: tuple[str, ...], version: str) -> Any:
    """``cset`` when its conditions name every feature of the model; else a ValueError naming the missing ones."""
    missing = [f for f in features if f not in cset.feature_names()]
    if missing:
        hint = ", e.g. with_features=liked=*" if missing == ["liked"] else ""
        raise ValueError(f"model_version {version} has condition features {','.join(features)}: the query "
                         f"conditions lack {','.join(missing)}; add it with with_features{hint}")
    return cset


def sequences_snapshot(wh: Warehouse, ds: str) -> int:
    """The Delta version of user_sequences read (one pinned snapshot); ValueError when partition ds is missing."""
    version = wh.version("user_sequences")
    if version is None or ds not in wh.partitions("user_sequences", version):
        raise ValueError(f"user_sequences has no partition ds={ds}; run `lum run sequences --ds {ds}` first")
    return version


# ---- the stage -------------------------------------------------------------------------------------

def run(cfg: Config, *, ds: str, warehouse: Warehouse | str) -> dict[str, Any]:
    """Infer partition ds; returns a summary (rows, users/s, skipped counts, versions)."""
    wh = Warehouse.of(warehouse)
    check_ds(ds)
    _validate_cfg(cfg)
    started = time.perf_counter()
    shard = parse_shard(cfg.shard)
    version = resolve_version(wh, ds, cfg.model_version)
    seq_version = sequences_snapshot(wh, ds)
    run_id = default_run_id(ds, version, seq_version, shard, pinned=cfg.run_id,
                            query=(cfg.mode, cfg.conditions, cfg.condition_feature, cfg.with_features))
    if shard is not None and shard.commit:
        versions = commit(wh, ds, run_id, shard.count)
        return {"stage": "infer", "ds": ds, "shard": shard.label, "model_version": version, "run_id": run_id,
                "versions": versions, "seconds": round(time.perf_counter() - started, 3)}
    summary = infer_partition(cfg, ds=ds, wh=wh, version=version, seq_version=seq_version, run_id=run_id,
                              shard=shard)
    if shard is None:
        summary["versions"] = commit(wh, ds, run_id, None)
    elif cfg.shard is None:  # rank of a torchrun job
        summary["versions"] = torchrun_commit(wh, ds, run_id, shard)
    else:
        summary["next"] = f"lum run infer --ds {ds} --shard commit/{shard.count} --model-version {version}"
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary


def infer_partition(cfg: Config, *, ds: str, wh: Warehouse, version: str, seq_version: int, run_id: str,
                    shard: ShardSpec | None) -> dict[str, Any]:
    """Stage this process's user_knowledge and item_knowledge files and manifests (no commit)."""
    device = resolve_device(cfg.device)
    before = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    try:
        return _infer_partition(cfg, ds=ds, wh=wh, version=version, seq_version=seq_version, run_id=run_id,
                                shard=shard, device=device)
    finally:
        torch.set_num_threads(before)


def _infer_partition(cfg: Config, *, ds: str, wh: Warehouse, version: str, seq_version: int, run_id: str,
                     shard: ShardSpec | None, device: Any) -> dict[str, Any]:
    loaded = model_store.load(wh.uri, version, device=device)
    model, vocab = loaded.model, loaded.vocab
    dim = check_model(loaded, version, ds)
    prior = "learned" if model.has_cond_head else "frequency"
    if prior == "frequency":
        log.warning("infer: model %s has no next-condition head (cond_loss_weight = 0); condition_logprob is the "
                    "add-1 smoothed history frequency of each condition", version)
    max_history = model.cfg.history_len  # max_len - 1: the positions training reaches
    cset = parse_spec(cfg.conditions, feature=cfg.condition_feature, with_features=cfg.with_features)
    cset = with_feedback(cset, tuple(vocab.features))
    cset = check_query_features(cset.resolve(vocab.conditions[1:]), vocab.features, version)
    fixed = None if cset.per_user else cset.fixed(vocab.conditions[1:], vocab.features)
    for c in fixed or []:
        vocab.condition_id(c)  # every query condition must be known to the model: fail before any work
    shard_arg = None if shard is None else shard.label
    query_ts, item_drift = None, None
    if model.cfg.time_features:  # queries are asked at the end of ds, items ranked by popularity (age) up to ds
        query_ts = int(day_end(ds).timestamp())
        item_drift = popularity_for(wh, vocab, first_ds=next_day(ds), last_ds=next_day(ds),
                                    window=model.cfg.popularity_days, item_age=model.cfg.item_age).item_features()
    total, chunks = sequence_chunks(wh, ds, seq_version, SEQUENCE_COLUMNS, cfg.chunk_users, shard)
    progress = Progress("infer", total, unit="users")
    stats = ChunkStats()
    user_stager = wh.stage_partition("user_knowledge", ds=ds, run_id=run_id, shard=shard_arg, dim=dim,
                                     file_bytes=cfg.file_mb << 20 if cfg.file_mb else None)
    seen, checked, last_max = 0, False, None
    for chunk in chunks:
        seen += chunk.num_rows
        if not checked:
            check_condition_features(vocab, [c[0] for c in chunk.column("conditions").to_pylist()[:50] if c], version)
            checked = True
        uids = chunk.column("user_id").to_numpy()
        if last_max is not None and int(uids.min()) <= last_max:  # guards the ordering invariant
            raise ValueError(f"user_sequences ds={ds}: chunks out of user_id order at user {int(uids.min())}")
        last_max = int(uids.max())
        out = process_chunk(chunk, model=model, vocab=vocab, cset=cset, fixed=fixed, mode=cfg.mode,
                            token_budget=cfg.token_budget, dim=dim, ds=ds, version=version,
                            max_history=max_history, device=device, stats=stats, query_ts=query_ts)
        if out is not None:
            user_stager.write(out, row_group_size=cfg.row_group_rows)
        progress.update(chunk.num_rows)
        del out, chunk
        heap.release()  # same-sized chunks must not grow the heap chunk after chunk (stages.core.heap)
    user_stager.finish()

    item_stager = wh.stage_partition("item_knowledge", ds=ds, run_id=run_id, shard=shard_arg, dim=dim)
    items = item_rows_table(model, vocab, dim=dim, ds=ds, version=version, shard=shard, drift=item_drift)
    item_stager.write(items, row_group_size=cfg.row_group_rows)
    item_stager.finish()
    elapsed = progress.done()
    return {
        "stage": "infer", "ds": ds, "mode": cfg.mode, "model_version": version, "run_id": run_id,
        "shard": None if shard is None else shard.label, "conditions": cfg.conditions,
        "n_conditions": None if fixed is None else len(fixed), "dim": dim,
        "users_read": seen, "users": stats.users, "rows": stats.rows, "item_rows": items.num_rows,
        "users_skipped_empty": stats.skipped_empty, "users_skipped_no_conditions": stats.skipped_no_conditions,
        "history_oov_items": stats.history_oov_items, "items_not_in_model": items_not_in_model(wh, vocab),
        "condition_prior": prior, "temperature": round(model_temperature(model), 6),
        "tokens": stats.tokens, "users_per_s": round(stats.users / max(elapsed, 1e-9), 1),
    }
