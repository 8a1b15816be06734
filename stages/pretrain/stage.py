"""``lum run pretrain --ds D``: train the LUM on ``user_sequences`` partition D and publish ``lum-D``.

Daily continuation (default): warm-start from ``model_store.latest_version(through=prev_day(D))`` and train
``continue_epochs`` over the sequences of users whose history changed on day D (their last behaviour has
ts inside day D): each one's newest max_len window, with the loss at every condition position. The version
records the last day seen (``through_ds = D``); rerunning D replaces ``lum-D`` (same content: seeded). No
parent version: log it and train from scratch over everything (``epochs``), or raise when
``require_warm_start``. No user changed on D: publish the parent's weights unchanged as ``lum-D`` (steps 0, logged).
``--retrain``: from scratch over every user's sequence, cut into max_len windows (``train_windows``; 0 = the
whole history the partition holds: ML-1M with ``lum run sequences --set max_len=4096`` gives 988k training
behaviours instead of the 652k of the last 200 per user).
New items / categories since the parent are added to the vocabulary (new rows start random; known rows
are copied by id/value). Users with a single behaviour are kept: they train the c1 -> i1 prior only.

Evaluation (``--set eval=true``): leave-last-out (stages.training.retrieval_eval): training excludes each user's last
two behaviours; HR@10/NDCG@10 (comparable) and the target-conditioned numbers go into the version's
metrics and the summary line. With the next-condition head (cond_loss_weight > 0) p(category | history)
is the learned one; ``frequency_prior_hr@10`` reports the same model under the history-frequency prior.
Seen items are filtered from the ranking as in the published ML-1M tables (stages.training.retrieval_eval).
ML-1M recipe (README): ``lum run sequences --ds 2003-02-28 --set max_len=4096`` then
``lum run pretrain --ds 2003-02-28 --retrain --set eval=true --set workers=2 --set threads=1``: HR@10 0.2957 /
NDCG@10 0.1677 in 23.5 minutes on 2 CPU cores (seeds 1, 2: 0.2851, 0.2790; mean of 3: 0.2866 / 0.1626;
SASRec 0.2853 / 0.1603).
Under torchrun the same entry point runs DDP (stages.training.loop); rank 0 evaluates and publishes.
``--set workers=N`` starts N such ranks on this host itself (CPU, stages.training.workers).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass

import numpy as np

from stages.core.config import to_dict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Config:
    retrain: bool = False            # train from scratch over everything instead of warm-starting
    require_warm_start: bool = False  # error (not scratch) when no version through D-1 exists
    eval: bool = False               # hold out the last 2 behaviours per user and report HR@10/NDCG@10
    eval_max_users: int = 0          # > 0: evaluate a seeded sample of users (faster smoke runs)
    max_len: int = 200               # behaviours per training sequence (SASRec ML-1M uses 200)
    train_windows: int = 0           # scratch runs: max_len windows per user, newest first (0: the whole history
                                     # user_sequences holds; 1: the last max_len, as SASRec). ML-1M, 10 epochs:
                                     # 0 -> HR@10 0.2599 in 15.5 min; 1 at 15 epochs (same tokens) -> 0.2503
    d_model: int = 64                # see stages.model.lum.ModelConfig for the model fields
    n_heads: int = 2
    n_layers: int = 2
    d_ff: int = 256
    dropout: float = 0.0             # ML-1M at a 30-minute CPU budget is under-trained, not over-fitted:
                                     # 5 epochs 0.0 -> HR@10 0.1825, 0.2 -> 0.1424;
                                     # 15 epochs 0.0 -> 0.2503, 0.1 -> 0.2377
    d_item: int = 64
    d_feature: int = 16
    temperature: float = 0.05
    learn_temperature: bool = True
    cond_loss_weight: float = 1.0    # next-condition head loss weight (item i_{l-1} -> c_l); gives the eval's learned
                                     # p(category | history). 0: no head, eval uses the history frequency prior.
                                     # ML-1M, 10 epochs (old defaults, seen items unfiltered):
                                     # 1.0 -> HR@10 0.1449, 0.2 -> 0.1301
    epochs: float = 30.0             # scratch runs: passes over the data. ML-1M (all windows, 2M tokens per pass):
                                     # 10 -> HR@10 0.2651, 20 -> 0.2851, 30 -> 0.2957 (3 seeds: mean 0.2866;
                                     # SASRec 0.2853); 30 passes took 23.5-26 min with workers=2 on 2 cores
    continue_epochs: float = 1.0     # warm-started daily runs: passes over the changed users' sequences
    max_steps: int = 0               # > 0 caps the steps (smoke tests)
    row_tokens: int = 400            # packed row budget (tokens); must be >= 2 * max_len (see TrainConfig)
    rows_per_step: int = 10          # packed rows per optimizer step (4k tokens); ML-1M, 5 epochs: 10 rows ->
                                     # HR@10 0.2002, 20 -> 0.1825, 5 -> 0.2007 (10 is faster per token than 5)
    lr: float = 2e-3                 # AdamW peak lr
    weight_decay: float = 0.01
    warmup_steps: int = 50
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    sampled_negatives: int = 1024    # extra negatives per step when negatives are sampled
    negative_sampling: str = "uniform"  # "all" (exact softmax over the catalog) | "uniform" | "popularity" |
                                        # "auto" ("all" up to 20k items); see stages.training.loop.TrainConfig
    logq: bool = False               # logQ correction of candidate logits
    seed: int = 0
    checkpoint_every: int = 200      # steps between checkpoints (resume point)
    log_every_s: float = 10.0        # seconds between progress lines (loss, tokens/s, ETA)
    device: str = "auto"             # "auto" (cuda when available) | "cpu" | "cuda"
    threads: int = 0                 # > 0: torch.set_num_threads (the machine is shared)
    workers: int = 1                 # CPU: > 1 trains with that many DDP processes on this host (gloo, `threads`
                                     # each, 1 if 0; stages.training.workers). Same model, less wall time:
                                     # ML-1M on the 2-core box, 2 -> 43k tokens/s vs 28k for 1

    def check(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.train_windows < 0:
            raise ValueError(f"train_windows must be >= 0 (0 = all), got {self.train_windows}")
        if 2 * self.max_len > self.row_tokens:
            raise ValueError(f"row_tokens {self.row_tokens} must be >= 2 * max_len ({2 * self.max_len})")
        from stages.training.loop import resolve_negative_sampling

        resolve_negative_sampling(self.negative_sampling, None, logq=self.logq)  # "auto" is resolved in training
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto|cpu|cuda, got {self.device!r}")
        self.model_config().check()

    def model_config(self):
        from stages.model.lum import ModelConfig

        names = {f.name for f in dataclasses.fields(ModelConfig)}
        return ModelConfig(**{k: v for k, v in to_dict(self).items() if k in names})

    def train_config(self, *, warm: bool):
        from stages.training.loop import TrainConfig

        names = {f.name for f in dataclasses.fields(TrainConfig)}
        d = {k: v for k, v in to_dict(self).items() if k in names}
        d["epochs"] = self.continue_epochs if warm else self.epochs
        return TrainConfig(**d)


def config_hash(cfg: Config, extra: str = "") -> str:
    d = to_dict(cfg)
    return hashlib.sha256((json.dumps(d, sort_keys=True) + extra).encode()).hexdigest()[:8]


def run(cfg: Config, *, ds: str, warehouse: str) -> dict:
    """Train through day ``ds`` and publish version ``lum-<ds>``; returns the summary dict."""
    import torch

    from stages.core.dates import check_ds, day_end, prev_day
    from stages.model import store as model_store
    from stages.model.lum import build_model
    from stages.pretrain.data import load_sequences, remap_state, training_windows
    from stages.training import loop as train_loop
    from stages.training.loop import _dist, init_distributed, launched_world_size

    check_ds(ds)
    cfg.check()
    device = torch.device("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    if cfg.workers > 1 and launched_world_size() <= 1:
        if device.type == "cuda":
            raise ValueError(f"workers={cfg.workers} starts CPU processes; on a GPU host launch "
                             f"`torchrun --nproc_per_node {cfg.workers} lum run pretrain ...` (nccl) instead")
        from stages.training.workers import run_workers

        return run_workers(cfg, ds=ds, warehouse=warehouse)
    started = time.perf_counter()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    init_distributed()
    _, rank, _world = _dist()
    data = load_sequences(warehouse, ds)
    vocab = data.vocab
    version = model_store.version_name(ds)

    parent = None if cfg.retrain else model_store.latest_version(warehouse, through=prev_day(ds))
    if parent is None and not cfg.retrain:
        if cfg.require_warm_start:
            raise ValueError(f"no model version through {prev_day(ds)} to warm-start from (require_warm_start=true)")
        log.info("no model version through %s: training from scratch", prev_day(ds))
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model_config(), vocab)
    parent_state = None
    if parent is not None:
        loaded = model_store.load(warehouse, parent)
        model.load_state_dict(remap_state(loaded.model.state_dict(), loaded.vocab, model.state_dict(), vocab))
        parent_state = model_store.load_checkpoint(loaded.path / "checkpoint.pt")
        log.info("warm start from %s", parent)
    model.to(device)

    day_start = np.datetime64(day_end(ds).replace(tzinfo=None), "us") - np.timedelta64(1, "D")
    users = np.arange(len(data.items))
    if parent is not None:
        users = np.nonzero(data.last_ts >= day_start)[0]
        log.info("continuation: %d of %d users changed on %s", users.size, len(data.items), ds)
    from stages.training.packing import Sequences
    from stages.training.retrieval_eval import split_leave_last_out

    split = split_leave_last_out([data.items[u] for u in users], [data.conds[u] for u in users]) if cfg.eval \
        else [((data.items[u], data.conds[u]), None, None) for u in users]
    # scratch runs train every window; warm-started daily runs only the newest one (what changed is in it)
    train_items, train_conds = training_windows([s[0][0] for s in split], [s[0][1] for s in split],
                                                cfg.max_len, cfg.train_windows if parent is None else 1)
    seqs = Sequences.from_lists(train_items, train_conds)
    counts = torch.from_numpy(np.bincount(seqs.items, minlength=vocab.n_item_rows).astype(np.float64))
    meta_parent = parent
    train_stats: dict = {"steps": 0}
    if len(seqs):
        tcfg = cfg.train_config(warm=parent is not None)
        rdir = model_store.run_dir(warehouse, version)
        run_key = config_hash(cfg, f"{ds}|{parent}|{len(seqs)}")
        if rank == 0:
            _prepare_run_dir(rdir, run_key)
        train_stats = train_loop.train(model, seqs, tcfg, item_counts=counts, ckpt_path=rdir / "checkpoint.pt",
                            init_state=parent_state)
    else:
        log.info("no user changed on %s: publishing %s's weights unchanged as %s", ds, parent, version)
    if rank != 0:
        return {"version": version, "rank": rank}
    metrics = {k: v for k, v in train_stats.items() if not k.endswith("_state")}
    metrics["train_sequences"] = len(seqs)
    if cfg.eval:
        from stages.training.retrieval_eval import evaluate

        cases = [s[2] for s in split if s[2] is not None and s[2][2] != 0]
        valid = [s[1] for s in split if s[1] is not None and s[1][2] != 0]
        if cfg.eval_max_users > 0 and len(cases) > cfg.eval_max_users:
            pick = np.random.default_rng(cfg.seed).choice(len(cases), cfg.eval_max_users, replace=False)
            cases, valid = [cases[i] for i in sorted(pick)], [valid[i] for i in sorted(pick)]
        t_eval = time.perf_counter()
        universe = np.unique(np.concatenate(data.items))
        universe = universe[universe > 0]
        metrics["test"] = evaluate(model, vocab, cases, candidate_rows=universe)
        metrics["valid"] = evaluate(model, vocab, valid, candidate_rows=universe)
        metrics["ranked_items"] = int(universe.size)
        metrics["eval_seconds"] = round(time.perf_counter() - t_eval, 2)
        log.info("eval test %s valid %s", metrics["test"], metrics["valid"])
    meta = {"version": version, "through_ds": ds, "parent": meta_parent, "config": to_dict(cfg),
            "model_config": dataclasses.asdict(cfg.model_config()), "metrics": metrics,
            "dim": cfg.d_model, "features": list(vocab.features), "created_unix": int(time.time())}
    ckpt = {"optimizer": train_stats.get("optimizer_state"), "step": train_stats.get("steps", 0)}
    model.to("cpu")
    model_store.publish(warehouse, version, {
        "model.pt": model.state_dict(), "vocab.json": vocab.to_json(),
        "meta.json": json.dumps(meta, indent=1, default=str), "checkpoint.pt": ckpt})
    shutil.rmtree(model_store.run_dir(warehouse, version), ignore_errors=True)
    summary = {"stage": "pretrain", "ds": ds, "version": version, "parent": meta_parent,
               "users": int(users.size), "sequences": len(seqs), "steps": train_stats.get("steps", 0),
               "resumed_from": train_stats.get("resumed_from", 0),
               "loss": round(float(train_stats.get("loss", float("nan"))), 4) if len(seqs) else None,
               "tokens_per_s": train_stats.get("tokens_per_s"), "seconds": round(time.perf_counter() - started, 2)}
    if cfg.eval:
        summary.update({k: metrics["test"][k] for k in ("hr@10", "ndcg@10", "target_cond_hr@10", "prior",
                                                        "frequency_prior_hr@10") if k in metrics["test"]})
    return summary


def _prepare_run_dir(rdir, run_key: str) -> None:
    """Keep an interrupted run's checkpoint only when it belongs to the same config and inputs."""
    key_file = rdir / "run_key"
    if rdir.exists() and (not key_file.is_file() or key_file.read_text() != run_key):
        log.info("discarding stale checkpoints in %s (different config or inputs)", rdir)
        shutil.rmtree(rdir)
    rdir.mkdir(parents=True, exist_ok=True)
    key_file.write_text(run_key)
