"""``lum run pretrain --ds D``: train the LUM on ``user_sequences`` partition D and publish ``lum-D``.

Warm start (default): from the newest version through D-1, ``continue_epochs`` over the users whose history
changed on day D (last behaviour inside D), each one's newest max_len window. No parent: train from scratch
(``train.epochs``), or raise with ``require_warm_start``; no user changed on D: publish the parent's weights as
``lum-D`` (steps 0). ``--retrain``: from scratch over every user's history cut into max_len windows
(``train_windows``; 0 = all the partition holds). Items and categories new since the parent get new random rows;
known rows are copied by id/value. Users with one behaviour are kept (they train the c1 -> i1 prior).
``eval=true``: training excludes each user's last two behaviours and the version's metrics get the leave-last-out
numbers (``stages.training.retrieval_eval``); that evaluation loads the partition into memory on rank 0
(benchmark-sized data). ``workers=N`` runs N local DDP ranks; under torchrun the same entry runs DDP; rank 0
evaluates and publishes. The summary's ``loss_curve`` holds [step, mean loss] points.
Memory: training streams the partition (``stages.pretrain.stream``): each rank reads only its share of the
users (by stable user hash) and holds one record batch and a shuffle buffer of ``shuffle_users`` sequences.
With one rank and every sequence in one buffer the batches are those of the whole partition in memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from stages.core.config import to_flat_dict
from stages.core.dates import check_ds, day_end, prev_day
from stages.core.device import DEVICES, resolve_device
from stages.model import store as model_store
from stages.model.item_popularity import popularity_for
from stages.model.lum import ModelConfig, build_model
from stages.pretrain.data import SeqData, check_partition, load_sequences, remap_state
from stages.pretrain.stream import Plan, first_day, open_stream
from stages.training import loop as train_loop
from stages.training.distributed import dist_info, init_distributed, launched_world_size
from stages.training.loop import TrainConfig, resolve_negative_sampling
from stages.training.retrieval_eval import evaluate, split_leave_last_out
from stages.training.workers import run_workers
from stages.warehouse.facade import Warehouse

log = logging.getLogger(__name__)

SCRATCH_EPOCHS = 10.0  # train.epochs default, chosen on the validation day (README: knowledge on the days it is used)


@dataclass(frozen=True)
class Config:
    """``model`` and ``train`` options are also set by their own names (``--set d_model=128``, ``epochs=30``)."""

    model: ModelConfig = field(default_factory=ModelConfig)  # the LUM's shape; stored with each version
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=SCRATCH_EPOCHS))  # optimisation
    retrain: bool = False            # train from scratch over everything instead of warm-starting
    require_warm_start: bool = False  # error (not scratch) when no version through D-1 exists
    eval: bool = False               # hold out the last 2 behaviours per user and report HR@10/NDCG@10
    eval_max_users: int = 0          # > 0: evaluate a seeded sample of users (faster smoke runs)
    train_windows: int = 0           # scratch runs: max_len windows per user, newest first; 0 = all, 1 = as SASRec
    continue_epochs: float = 1.0     # warm-started daily runs: passes over the changed users' sequences
    device: str = "auto"             # "auto" (cuda when available) | "cpu" | "cuda"
    threads: int = 0                 # > 0: torch.set_num_threads (the machine is shared)
    workers: int = 1                 # CPU: > 1 splits each step over N local DDP processes (each its own users)
    shuffle_users: int = 65536       # sequences per shuffle buffer: a rank holds one buffer, not the partition

    def check(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.shuffle_users < 1:
            raise ValueError(f"shuffle_users must be >= 1, got {self.shuffle_users}")
        if self.workers > self.train.rows_per_step:
            raise ValueError(f"workers {self.workers} must be <= rows_per_step {self.train.rows_per_step}: "
                             "each rank trains rows of its own users in every step")
        if self.train_windows < 0:
            raise ValueError(f"train_windows must be >= 0 (0 = all), got {self.train_windows}")
        if 2 * self.model.max_len > self.train.row_tokens:
            raise ValueError(f"row_tokens {self.train.row_tokens} must be >= 2 * max_len ({2 * self.model.max_len})")
        resolve_negative_sampling(self.train.negative_sampling, None, logq=self.train.logq)  # "auto": in training
        if self.device not in DEVICES:
            raise ValueError(f"device must be {'|'.join(DEVICES)}, got {self.device!r}")
        self.model.check()

    def train_config(self, *, warm: bool) -> TrainConfig:
        """``train``, with ``continue_epochs`` as its epochs for a warm-started run."""
        return dataclasses.replace(self.train, epochs=self.continue_epochs) if warm else self.train


def config_hash(cfg: Config, extra: str = "") -> str:
    """8 hex digits of the config's flat form (the same hash the config had before it was nested) + ``extra``."""
    d = to_flat_dict(cfg)
    return hashlib.sha256((json.dumps(d, sort_keys=True) + extra).encode()).hexdigest()[:8]


def run(cfg: Config, *, ds: str, warehouse: Warehouse | str) -> dict:
    """Train through day ``ds`` and publish version ``lum-<ds>``; returns the summary dict.

    torch's thread count (``threads``) is restored afterwards: a later stage of the same process (infer in a
    backfill) then computes as it does alone, and CPU results can differ in the last bit between thread counts."""
    before = torch.get_num_threads()
    try:
        return _run(cfg, ds=ds, warehouse=warehouse)
    finally:
        torch.set_num_threads(before)


def _run(cfg: Config, *, ds: str, warehouse: Warehouse | str) -> dict:
    check_ds(ds)
    cfg.check()
    wh = Warehouse.of(warehouse)
    device = resolve_device(cfg.device)
    if cfg.workers > 1 and launched_world_size() <= 1:
        return _run_local_workers(cfg, ds, wh, device)
    started = time.perf_counter()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    init_distributed(device)
    _, rank, _world = dist_info()
    check_partition(wh, ds)
    version = model_store.version_name(ds)

    parent = None if cfg.retrain else model_store.latest_version(wh.uri, through=prev_day(ds))
    if parent is None and not cfg.retrain:
        if cfg.require_warm_start:
            raise ValueError(f"no model version through {prev_day(ds)} to warm-start from (require_warm_start=true)")
        log.info("no model version through %s: training from scratch", prev_day(ds))
    loaded = model_store.load(wh.uri, parent) if parent is not None else None
    width_keys = ("time_features", "item_age")
    kept = {k: getattr(loaded.model.cfg, k) for k in width_keys} if loaded is not None else {}
    if kept and kept != {k: getattr(cfg.model, k) for k in width_keys}:
        # the knowledge width follows these: a daily run keeps its parent's, so the tables keep theirs
        log.warning("pretrain: parent %s has %s; keeping it (rerun with --retrain to change it)", parent,
                    ", ".join(f"{k}={v}" for k, v in kept.items()))
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **kept))
    warm, timed = parent is not None, cfg.model.time_features
    # scratch runs train every window; warm-started daily runs only the newest one (what changed is in it)
    plan = Plan(max_len=cfg.model.max_len, windows=1 if warm else cfg.train_windows, timed=timed, eval=cfg.eval,
                changed_since=_day_start(ds) if warm else None)
    stream = open_stream(wh, ds, plan, shuffle_users=cfg.shuffle_users, row_tokens=cfg.train.row_tokens)
    vocab = stream.vocab
    if warm:
        log.info("continuation: %d users changed on %s", stream.users, ds)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, vocab)
    parent_state = None
    if loaded is not None:
        model.load_state_dict(remap_state(loaded.model.state_dict(), loaded.vocab, model.state_dict(), vocab))
        parent_state = model_store.load_checkpoint(loaded.path / "checkpoint.pt")
        log.info("warm start from %s", parent)
    model.to(device)

    popularity = popularity_for(wh, vocab, first_ds=first_day(stream.first_ts, ds), last_ds=ds,
                                window=cfg.model.popularity_days, item_age=cfg.model.item_age) if timed else None
    counts = torch.from_numpy(stream.item_counts)
    n_seqs = stream.sequences
    train_stats: dict = {"steps": 0}
    if n_seqs:
        rdir = model_store.run_dir(wh.uri, version)
        if rank == 0:
            _prepare_run_dir(rdir, config_hash(cfg, f"{ds}|{parent}|{n_seqs}|{stream.files}"))
        train_stats = train_loop.train(model, stream.steps, cfg.train_config(warm=warm), item_counts=counts,
                                       ckpt_path=rdir / "checkpoint.pt", init_state=parent_state,
                                       popularity=popularity)
    else:
        log.info("no user changed on %s: publishing %s's weights unchanged as %s", ds, parent, version)
    if rank != 0:
        return {"version": version, "rank": rank}
    metrics = {k: v for k, v in train_stats.items() if not k.endswith("_state") and k != "loss_curve"}
    metrics["train_sequences"] = n_seqs
    if cfg.eval:
        data = load_sequences(wh, ds, vocab)
        metrics.update(_evaluate(cfg, model, data, _select_users(cfg, data, ds, warm=warm)[1], popularity))
    meta = {"version": version, "through_ds": ds, "parent": parent, "config": to_flat_dict(cfg),
            "model_config": dataclasses.asdict(cfg.model), "metrics": metrics,
            "dim": cfg.model.knowledge_dim, "features": list(vocab.features), "created_unix": int(time.time())}
    ckpt = {"optimizer": train_stats.get("optimizer_state"), "step": train_stats.get("steps", 0)}
    model.to("cpu")
    model_store.publish(wh.uri, version, {
        "model.pt": model.state_dict(), "vocab.json": vocab.to_json(),
        "meta.json": json.dumps(meta, indent=1, default=str), "checkpoint.pt": ckpt})
    shutil.rmtree(model_store.run_dir(wh.uri, version), ignore_errors=True)
    summary = {"stage": "pretrain", "ds": ds, "version": version, "parent": parent,
               "users": stream.users, "sequences": n_seqs, "steps": train_stats.get("steps", 0),
               "resumed_from": train_stats.get("resumed_from", 0),
               "loss": round(float(train_stats.get("loss", float("nan"))), 4) if n_seqs else None,
               "tokens_per_s": train_stats.get("tokens_per_s"), "seconds": round(time.perf_counter() - started, 2),
               "loss_curve": [[step, round(loss, 4)] for step, loss in train_stats.get("loss_curve", [])]}
    if cfg.eval:
        summary.update({k: metrics["test"][k] for k in ("hr@10", "ndcg@10", "target_cond_hr@10", "prior",
                                                        "frequency_prior_hr@10") if k in metrics["test"]})
    return summary


def _run_local_workers(cfg: Config, ds: str, wh: Warehouse, device: torch.device) -> dict:
    """``workers > 1`` outside torchrun: the same run as that many local gloo ranks; rank 0's summary."""
    if device.type == "cuda":
        raise ValueError(f"workers={cfg.workers} starts CPU processes; on a GPU host launch "
                         f"`torchrun --nproc_per_node {cfg.workers} lum run pretrain ...` (nccl) instead")
    child = dataclasses.replace(cfg, workers=1, threads=cfg.threads or 1)
    log.info("pretrain: %d DDP workers on this host (gloo, %d thread(s) each)", cfg.workers, child.threads)
    summary = run_workers(run, {"cfg": child, "ds": ds, "warehouse": wh.uri}, world=cfg.workers, name="pretrain")
    return {**summary, "workers": cfg.workers}


def _select_users(cfg: Config, data: SeqData, ds: str, *, warm: bool) -> tuple[np.ndarray, list]:
    """The users a run trains on (a warm-started run: those whose history changed on ``ds``) and their
    leave-last-out split (``eval``) or their whole histories: [((items, conds), valid, test), ...]."""
    users = np.arange(len(data.items))
    if warm:
        users = np.nonzero(data.last_ts >= _day_start(ds))[0]
    ts = [data.ts[u] for u in users] if cfg.model.time_features else None
    if cfg.eval:
        return users, split_leave_last_out([data.items[u] for u in users], [data.conds[u] for u in users], ts)
    if ts is not None:
        return users, [((data.items[u], data.conds[u], t), None, None) for u, t in zip(users, ts)]
    return users, [((data.items[u], data.conds[u]), None, None) for u in users]


def _day_start(ds: str) -> np.datetime64:
    """The first microsecond of day ``ds`` (UTC, naive): a user whose last behaviour is at or after it changed."""
    return np.datetime64(day_end(ds).replace(tzinfo=None), "us") - np.timedelta64(1, "D")


def _evaluate(cfg: Config, model, data: SeqData, split: list, popularity) -> dict:
    """Leave-last-out metrics (test, valid) over every item of the data set, on rank 0 after training."""
    cases = [s[2] for s in split if s[2] is not None and s[2][2] != 0]
    valid = [s[1] for s in split if s[1] is not None and s[1][2] != 0]
    if cfg.eval_max_users > 0 and len(cases) > cfg.eval_max_users:
        pick = np.random.default_rng(cfg.train.seed).choice(len(cases), cfg.eval_max_users, replace=False)
        cases, valid = [cases[i] for i in sorted(pick)], [valid[i] for i in sorted(pick)]
    t_eval = time.perf_counter()
    universe = np.unique(np.concatenate(data.items))
    universe = universe[universe > 0]
    out = {"test": evaluate(model, data.vocab, cases, candidate_rows=universe, popularity=popularity),
           "valid": evaluate(model, data.vocab, valid, candidate_rows=universe, popularity=popularity),
           "ranked_items": int(universe.size)}
    out["eval_seconds"] = round(time.perf_counter() - t_eval, 2)
    log.info("eval test %s valid %s", out["test"], out["valid"])
    return out


def _prepare_run_dir(rdir, run_key: str) -> None:
    """Keep an interrupted run's checkpoint only when it belongs to the same config and inputs."""
    key_file = rdir / "run_key"
    if rdir.exists() and (not key_file.is_file() or key_file.read_text() != run_key):
        log.info("discarding stale checkpoints in %s (different config or inputs)", rdir)
        shutil.rmtree(rdir)
    rdir.mkdir(parents=True, exist_ok=True)
    key_file.write_text(run_key)
