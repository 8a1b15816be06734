"""The LUM training loop: packed batches, InfoNCE, AdamW, warmup + cosine, clipping, checkpoints, DDP.

Epoch e's data order is a function of (seed, e) alone and a checkpoint holds model, optimizer, scheduler, step,
the RNG states and the loss curve, so a resumed run replays exactly what an uninterrupted one does
(test_pretrain_resume). Under a process group (torchrun, or ``stages.training.workers``) each rank takes rows
``rank::world`` of every step, the candidates are the union of all ranks' targets, and the loss is scaled so
that DDP's gradient average equals the single-process gradient on the same global batch (test_pretrain_ddp).
Loss = (InfoNCE sum + cond_loss_weight * next-condition CE sum) / condition positions of the global batch.
GPU: bf16 autocast for the forward. ``train``'s ``loss_curve`` has at most CURVE_POINTS (step, mean loss since
the previous point) pairs.
An unreadable checkpoint is a logged warning and a start from step 0 (``_resume_state``).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from stages.core.progress import Progress
from stages.model.losses import info_nce_loss, next_condition_loss, popularity_log_q, sample_negatives
from stages.model.store import load_checkpoint, save_checkpoint
from stages.model.timefeat import epoch_day
from stages.training.distributed import dist_info, gather_targets, global_max, global_mean
from stages.training.packing import Sequences
from stages.training.steps import MemorySteps, StreamSteps

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 1.0            # passes over the training sequences (fractional allowed)
    max_steps: int = 0             # > 0 caps the step count (smoke runs); 0 = from epochs
    row_tokens: int = 400          # token budget of one packed row; >= 2 * max_len. Twice max_len: the dense
                                   # attention mask costs ~ row_tokens^2, so longer rows cost more than they fill
    rows_per_step: int = 10        # rows per optimizer step (the global batch, split across DDP ranks)
    lr: float = 2e-3               # AdamW peak learning rate (small model, large batch)
    weight_decay: float = 0.01     # light decoupled weight decay
    warmup_steps: int = 50         # linear warmup before the cosine decay
    min_lr_ratio: float = 0.05     # cosine floor as a fraction of lr
    grad_clip: float = 1.0         # global grad-norm clip
    sampled_negatives: int = 1024  # extra negatives per step on top of in-batch ones
    negative_sampling: str = "uniform"  # "uniform" | "popularity" source of the extra negatives | "all": every
                                        # item is a candidate (exact softmax; no sampling bias; sampled_negatives
                                        # is ignored). "auto": "all" up to ALL_ITEMS_MAX item rows, else "uniform"
    logq: bool = True              # subtract log popularity from sampled candidates' logits (sampling-bias
                                   # correction; chosen on the validation day, README); unused with "all"
    seed: int = 0                  # seeds init, data order, dropout and negatives
    checkpoint_every: int = 200    # steps between checkpoints (0 = only at the end)
    log_every_s: float = 10.0      # seconds between progress lines


ALL_ITEMS_MAX = 20_000  # "auto" scores every item up to this catalog size: (positions x items) logits per step
CURVE_POINTS = 50  # most points of a run's loss curve: short enough for a summary line, enough for a plot
NEGATIVE_SAMPLINGS = ("auto", "all", "uniform", "popularity")


def resolve_negative_sampling(mode: str, n_item_rows: int | None, *, logq: bool = False) -> str:
    """The candidate scheme a run uses: "all" | "uniform" | "popularity" ("auto" picks by catalog size).

    n_item_rows None (the catalog is not known yet, e.g. a config check): "auto" stays "auto". ValueError
    for an unknown mode. ``logq`` is accepted with every mode; "all" samples nothing, so training ignores it."""
    if mode not in NEGATIVE_SAMPLINGS:
        raise ValueError(f"negative_sampling must be one of {'|'.join(NEGATIVE_SAMPLINGS)}, got {mode!r}")
    if mode == "auto" and n_item_rows is not None:
        mode = "all" if n_item_rows - 1 <= ALL_ITEMS_MAX else "uniform"
    return mode


def lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warmup to 1, then cosine down to ``min_lr_ratio`` at ``total``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    t = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def train(model, seqs: Sequences | MemorySteps | StreamSteps, cfg: TrainConfig, *, item_counts: torch.Tensor, ckpt_path: Path | None,
          resume: bool = True, stop_after_step: int | None = None, init_state: dict | None = None,
          popularity=None) -> dict:
    """Train ``model`` in place on ``seqs``; returns {"steps", "loss", "loss_curve", "tokens", "seconds", ...}.

    seqs: every sequence in memory, or a ``stages.training.steps`` source (``StreamSteps``: this rank's stream);
    the ranks agree on the step count (the most any rank needs).

    item_counts: (n_item_rows,) training events per item (popularity sampling, logQ). ckpt_path: None = no
    checkpoints; resume: continue from it when it exists. init_state: optimizer state to warm-start from (ignored
    when resuming). stop_after_step: test hook, raises RuntimeError after that step. No sequences: ValueError.
    popularity: a ``stages.model.timefeat.Popularity`` over the behaviours' days; a time-aware model needs it and
    sequences with ``ts``: each candidate's logit gets the query's weight of the candidate's bucket that day.
    """
    timed = bool(getattr(model.cfg, "time_features", False))
    source = MemorySteps(seqs) if isinstance(seqs, Sequences) else seqs
    if timed and (popularity is None or not source.has_ts):
        raise ValueError("a model with time_features needs sequences with timestamps and a popularity table")
    group, rank, world = dist_info()
    device = next(model.parameters()).device
    if isinstance(seqs, Sequences) and len(seqs) == 0:
        raise ValueError("no training sequences (empty user_sequences partition or selection)")
    steps_per_epoch = global_max(source.steps_per_epoch(cfg, rank, world), group, device)
    if steps_per_epoch == 0:
        raise ValueError("no training sequences (empty user_sequences partition or selection)")
    total = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * steps_per_epoch))
    net = model
    if group is not None:
        net = DistributedDataParallel(model)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, cfg))
    gen = torch.Generator().manual_seed(cfg.seed + 7919)
    torch.manual_seed(cfg.seed + 1 + rank)
    probs, log_q = popularity_log_q(item_counts)
    start = 0
    curve = LossCurve(total)
    state = _resume_state(ckpt_path) if (resume and ckpt_path is not None) else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        gen.set_state(state["neg_rng"])
        start = int(state["step"])
        curve.load(state.get("loss_curve"))
        log.info("resumed from %s at step %d of %d", ckpt_path, start, total)
    elif init_state is not None and init_state.get("optimizer") and not _same_shapes(init_state["optimizer"], opt):
        log.info("warm start: parent optimizer state does not fit (vocabulary grew); fresh AdamW")
    elif init_state is not None and init_state.get("optimizer"):
        try:
            opt.load_state_dict(init_state["optimizer"])
            for g in opt.param_groups:
                g["lr"] = cfg.lr
            log.info("warm start: optimizer state restored from the parent version")
        except (ValueError, KeyError) as exc:
            log.info("warm start: parent optimizer state not reusable (%s); fresh AdamW", exc)
    sampling = resolve_negative_sampling(cfg.negative_sampling, model.item_id_emb.num_embeddings, logq=cfg.logq)
    all_items = torch.arange(1, model.item_id_emb.num_embeddings, device=device) if sampling == "all" else None
    use_logq = cfg.logq and all_items is None  # exact softmax: no sampling bias to correct
    log.info("negatives: %s%s", "every item (exact softmax)" if all_items is not None else
             f"in-batch + {cfg.sampled_negatives} {sampling}-sampled per step", ", logQ-corrected" if use_logq else "")
    use_bf16 = device.type == "cuda"
    cond_w = float(getattr(model.cfg, "cond_loss_weight", 0.0)) if getattr(model, "has_cond_head", False) else 0.0
    progress = Progress("pretrain", total - start, unit="steps", every_s=cfg.log_every_s, logger=log)
    tokens, t0, loss_val, acc, cond_val = 0, time.perf_counter(), float("nan"), 0.0, float("nan")
    if state is not None:  # resumed at the last step, nothing runs: report what the interrupted run reached
        loss_val, acc, cond_val = state.get("loss", loss_val), state.get("accuracy", acc), state.get("cond_loss", cond_val)
    fills = []
    batches, batches_epoch = None, -1
    net.train()
    for step in range(start, total):
        epoch, k = divmod(step, steps_per_epoch)
        if batches_epoch != epoch:
            batches, batches_epoch = source.epoch(cfg, epoch, rank, world, steps_per_epoch, skip=k), epoch
            fills.append(source.fill(cfg, epoch))
            for _ in range(k):
                next(batches)  # a resumed epoch: the steps already trained
        # idle: this rank has no row in the step; it runs a placeholder batch with its loss multiplied by 0, so
        # DDP's gradient all-reduce still sees every parameter from every rank; its targets stay out of the
        # shared candidates and the counts, so the result equals the ranks with rows alone
        batch, idle = next(batches)
        items = batch.items.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = net(items, batch.conds.to(device), batch.cu_seqlens.to(device),
                      batch.row_of_seq.to(device), cfg.row_tokens, with_item_hidden=cond_w > 0,
                      ts=batch.ts.to(device) if timed else None, with_popularity=timed)
        cond_sum, bias = None, None
        if timed:
            *out, pop_w = out if isinstance(out, tuple) else (out,)
            out = tuple(out) if len(out) > 1 else out[0]
            bias = _popularity_bias(pop_w.float(), epoch_day(batch.ts.to(device)), popularity)
        if cond_w > 0:
            out, item_h = out
            cond_sum, n_cond = next_condition_loss(model.cond_logits(item_h.float()), batch.conds.to(device),
                                              model.cond_features, batch.cu_seqlens.to(device))
        all_targets, n_global = gather_targets(items[:0] if idle else items, group)
        if all_items is not None:
            sampled = all_items
        else:
            sampled = (sample_negatives(cfg.sampled_negatives, probs if sampling == "popularity" else None,
                                        model.item_id_emb.num_embeddings, gen).to(device)
                       if cfg.sampled_negatives > 0 else None)
        extra = all_targets if sampled is None else torch.cat([all_targets, sampled])
        loss_sum, stats = _local_loss(model, out.float(), items, extra, log_q.to(device) if use_logq else None,
                                      accuracy=step == total - 1, bias=bias)
        if cond_sum is not None:  # same normaliser as InfoNCE: independent of packing and of the DDP split
            loss_sum = loss_sum + cond_w * cond_sum
            cond_val = float(cond_sum.detach()) / max(1, n_cond)  # this rank's mean next-condition CE
        if idle:
            loss_sum = loss_sum * 0.0
        loss = loss_sum * world / max(1, n_global)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        tokens += 2 * int(n_global)
        loss_val = global_mean(loss_sum.detach(), n_global, group)
        curve.add(step + 1, loss_val)
        acc = stats["accuracy"] if stats["accuracy"] is not None else acc
        progress.update(1, loss=loss_val, tok_s=round(tokens / max(1e-9, time.perf_counter() - t0)),
                        lr=sched.get_last_lr()[0])
        done = step + 1
        if ckpt_path is not None and rank == 0 and (
                (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == total):
            save_checkpoint(ckpt_path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                        "scheduler": sched.state_dict(), "step": done, "loss_curve": curve.state(),
                                        "torch_rng": torch.get_rng_state(), "neg_rng": gen.get_state(),
                                        "loss": loss_val, "accuracy": acc, "cond_loss": cond_val})
        if stop_after_step is not None and done >= stop_after_step and done < total:
            raise RuntimeError(f"stopped after step {done} (test hook)")
    seconds = time.perf_counter() - t0
    progress.done(loss=loss_val)
    return {"steps": total, "resumed_from": start, "loss": loss_val, "loss_curve": curve.points,
            "accuracy": acc, "tokens": tokens,
            "cond_loss": cond_val if cond_w > 0 else None,
            "seconds": round(seconds, 2), "tokens_per_s": round(tokens / max(seconds, 1e-9)),
            "pack_fill": round(float(np.mean(fills)), 4) if fills else None,
            "logit_scale": float(model.logit_scale.detach()), "steps_per_epoch": steps_per_epoch,
            "optimizer_state": opt.state_dict(), "scheduler_state": sched.state_dict()}


class LossCurve:
    """The mean loss of each block of ceil(total / CURVE_POINTS) steps, as (last step of the block, mean)."""

    def __init__(self, total: int) -> None:
        self.total, self.block = total, max(1, math.ceil(total / CURVE_POINTS))
        self.points: list[tuple[int, float]] = []
        self._sum, self._n = 0.0, 0

    def add(self, step: int, loss: float) -> None:
        """Record the loss of 1-based step ``step``; a block's point is added at its last step."""
        self._sum, self._n = self._sum + loss, self._n + 1
        if step % self.block == 0 or step == self.total:
            self.points.append((step, self._sum / self._n))
            self._sum, self._n = 0.0, 0

    def state(self) -> dict:
        return {"points": list(self.points), "sum": self._sum, "n": self._n}

    def load(self, state: dict | None) -> None:
        """Continue from a checkpoint's ``state()`` (None: a checkpoint without a curve; start empty)."""
        if state:
            self.points = [(int(s), float(v)) for s, v in state["points"]]
            self._sum, self._n = float(state["sum"]), int(state["n"])


def _resume_state(path: Path) -> dict | None:
    """The run's checkpoint to resume from; an unreadable one (truncated, damaged) is logged as a warning and
    training starts over from step 0: the run is deterministic, so that costs time, never a different model,
    and the next checkpoint replaces the damaged file (``lum verify`` names it meanwhile)."""
    try:
        state = load_checkpoint(path)
    except ValueError as exc:
        log.warning("%s; starting this run over from step 0", exc)
        return None
    missing = [k for k in ("model", "optimizer", "scheduler", "step", "torch_rng", "neg_rng") if k not in state] \
        if state is not None else []
    if missing:
        log.warning("checkpoint %s lacks %s; starting this run over from step 0", path, ", ".join(missing))
        return None
    return state


def _same_shapes(saved: dict, opt) -> bool:
    """Whether a saved AdamW state matches the new optimizer's parameter shapes one to one."""
    params = [p for g in opt.param_groups for p in g["params"]]
    state = saved.get("state", {})
    if len(saved.get("param_groups", [])) != len(opt.param_groups):
        return False
    for i, p in enumerate(params):
        s = state.get(i)
        if s is not None and "exp_avg" in s and tuple(s["exp_avg"].shape) != tuple(p.shape):
            return False
    return True


def _popularity_bias(weights: torch.Tensor, days: torch.Tensor, popularity):
    """cands (C,) -> (P, C): each query's weights (``weights`` (P, drift width)) of each candidate's popularity
    (and age) bucket on the query's epoch day (``days`` (P,))."""
    return lambda cands: popularity.bias(weights, days, cands)


def _local_loss(model, out, targets, candidates, log_q, accuracy=True, bias=None):
    """Sum (not mean) of InfoNCE terms of this rank's positions over the shared candidate set."""
    loss, stats = info_nce_loss(out, targets, model.item_embeddings, scale=model.logit_scale,
                                sampled=candidates, log_q=log_q, accuracy=accuracy, bias=bias)
    return loss * targets.numel(), stats
