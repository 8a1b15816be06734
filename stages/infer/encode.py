"""Users of one chunk -> model outputs o_q -> user_knowledge rows, in grouped or naive mode.

``grouped``: ``model.encode_grouped`` reads each history ``[c1, i1, ..., cL, iL]`` once and each of the N
condition tokens attends to it and to itself (``kernels.grouped_query_attention``): 2L + N tokens. ``naive``
(the baseline): history + one condition token per forward, N (2L + 1) tokens, through ``encode_grouped`` with
one query per user (whose mask is exactly causal attention), so both modes share the attention code and give
the same o_q up to float rounding. Every embedding block is checked (finite, width = the model's
``meta["dim"]``) before it becomes rows, so a bad model fails the run before anything is staged.
Each row also gets ``condition_logprob``: the next-condition head's log p(c | history) from the state at the
user's last item token (the same forward as o_q; naive mode: its first pass), log-softmaxed over the conditions
written for that user. A model without the head (cond_loss_weight = 0) gets the history-frequency prior
instead, add-1 smoothed over the same conditions: log((n_c + 1) / sum_c' (n_c' + 1)), n_c = the behaviours of
the history read whose condition is c. ``temperature`` is 1 / the model's logit scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from stages.core.conditions import ConditionSet
from stages.infer.chunks import JaggedBatch, build_batch, flat_histories, pack_by_budget

MODES = ("grouped", "naive")


def encode(model: Any, batch: JaggedBatch, mode: str) -> torch.Tensor:
    """(sum N_b, D) float32 outputs o_q for one jagged batch, in user-then-condition order."""
    return encode_batch(model, batch, mode, next_cond=False)[0]


def encode_batch(model: Any, batch: JaggedBatch, mode: str, *, next_cond: bool,
                 popularity: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(o_q (sum N_b, D) float32; with ``next_cond`` the (B, n_conditions) log p(next condition | history) of the
    same forward, else None; with ``popularity`` the (sum N_b, drift width) drift weights, else None).
    ``next_cond`` needs the model's next-condition head, ``popularity`` its time features."""
    with torch.inference_mode():
        if mode == "grouped":
            out = model.encode_grouped(batch.hist_item_rows, batch.hist_cond_ids, batch.cu_hist,
                                       batch.query_cond_ids, batch.cu_queries, with_next_cond=next_cond,
                                       hist_ts=batch.hist_ts, query_ts=batch.query_ts, with_popularity=popularity)
            out = list(out) if isinstance(out, tuple) else [out]
            o = out.pop(0).float()
            log_p = out.pop(0).float() if next_cond else None
            pop_w = out.pop(0).float() if popularity else None
            return o, log_p, pop_w
        return encode_naive(model, batch, next_cond=next_cond, popularity=popularity)


def encode_naive(model: Any, batch: JaggedBatch, *, next_cond: bool = False,
                 popularity: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Baseline: for j = 0..max N-1, one forward of every user that has a j-th condition with its full
    history plus that single condition token (plain causal attention; the history is recomputed N times).
    The first pass holds every user, so it also gives the next-condition log-probabilities."""
    cu_q = batch.cu_queries.tolist()
    cu_h = batch.cu_hist.tolist()
    n_q = [cu_q[b + 1] - cu_q[b] for b in range(len(cu_q) - 1)]
    dev = batch.hist_item_rows.device
    out, log_p, pop_w = None, None, None
    for j in range(max(n_q)):
        users = [b for b, n in enumerate(n_q) if n > j]
        hist_idx = torch.cat([torch.arange(cu_h[b], cu_h[b + 1]) for b in users]).to(dev)
        lens = torch.tensor([cu_h[b + 1] - cu_h[b] for b in users], dtype=torch.int64)
        cu_hist = torch.zeros(len(users) + 1, dtype=torch.int32)
        cu_hist[1:] = torch.cumsum(lens, 0).to(torch.int32)
        q_pos = torch.tensor([cu_q[b] + j for b in users], dtype=torch.int64)
        cu_one = torch.arange(len(users) + 1, dtype=torch.int32)
        users_t = torch.tensor(users, dtype=torch.long, device=dev)
        res = model.encode_grouped(batch.hist_item_rows[hist_idx], batch.hist_cond_ids[hist_idx], cu_hist.to(dev),
                                   batch.query_cond_ids[q_pos.to(dev)], cu_one.to(dev),
                                   with_next_cond=next_cond and j == 0,
                                   hist_ts=None if batch.hist_ts is None else batch.hist_ts[hist_idx],
                                   query_ts=None if batch.query_ts is None else batch.query_ts[users_t],
                                   with_popularity=popularity)
        res = list(res) if isinstance(res, tuple) else [res]
        o = res.pop(0).float()
        if next_cond and j == 0:
            log_p = res.pop(0).float()
        if out is None:
            out = o.new_empty((cu_q[-1], o.shape[1]))
        out[q_pos.to(o.device)] = o
        if popularity:
            w = res.pop(0).float()
            if pop_w is None:
                pop_w = w.new_empty((cu_q[-1], w.shape[1]))
            pop_w[q_pos.to(w.device)] = w
    return out, log_p, pop_w


def tokens_per_user(mode: str, hist_lens: list[int], n_queries: list[int]) -> list[int]:
    """Forward tokens of every user: 2L + N grouped, N (2L + 1) naive."""
    if mode == "grouped":
        return [2 * h + n for h, n in zip(hist_lens, n_queries)]
    return [n * (2 * h + 1) for h, n in zip(hist_lens, n_queries)]


def forward_budget(mode: str, token_budget: int, max_queries: int) -> int:
    """Tokens per packed batch: naive forwards one condition at a time, so its budget is per condition and
    is scaled by the largest N to keep the per-forward size comparable to grouped."""
    return token_budget if mode == "grouped" else token_budget * max_queries


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


@dataclass
class ChunkStats:
    """Counters summed over the chunks of a run (reported in the stage summary)."""

    users: int = 0
    rows: int = 0
    skipped_empty: int = 0
    skipped_no_conditions: int = 0
    history_oov_items: int = 0
    tokens: int = 0


def process_chunk(chunk: pa.Table, *, model: Any, vocab: Any, cset: ConditionSet, fixed: list[str] | None,
                  mode: str, token_budget: int, dim: int, ds: str, version: str, max_history: int | None,
                  device: str | torch.device, stats: ChunkStats, query_ts: int | None = None) -> pa.Table | None:
    """Users of one chunk (any order) -> user_knowledge rows sorted by (user_id, condition order).

    Users without history or without a condition are skipped (counted in ``stats``); None when none is left.
    ``fixed``: the condition list shared by every user, or None to derive it per user from ``cset``.
    ``query_ts`` (epoch seconds; time-aware models, needs the chunk's ``ts`` column): the embedding is
    [o, T * popularity weights] (stages.model.timefeat), so <row, item row> / T adds the bucket's weight.
    """
    chunk = chunk.sort_by("user_id")
    h = flat_histories(chunk, vocab, max_history, timed=query_ts is not None)
    features = tuple(vocab.features)
    fixed_ids = None if fixed is None else np.asarray([vocab.condition_id(q) for q in fixed], dtype=np.int64)
    stats.skipped_empty += int((h.lengths == 0).sum())
    live = np.flatnonzero(h.lengths > 0)
    if fixed is not None:
        query_names = [fixed] * len(live)
    else:  # per-user condition sets read the user's condition strings (top:K)
        names = [cset.for_user(h.condition_strings(u), features) for u in live.tolist()]
        stats.skipped_no_conditions += sum(1 for q in names if not q)
        live = np.asarray([u for u, q in zip(live.tolist(), names) if q], dtype=np.int64)
        query_names = [q for q in names if q]
    stats.users += len(live)
    if not len(live):
        return None
    keep_uid = h.user_ids[live].tolist()
    hist_items, hist_conds, hist_ts = h.split(h.rows, live), h.split(h.cond_ids, live), h.split(h.ts, live)
    hist_lens = h.lengths[live].tolist()
    stats.history_oov_items += int(sum(int((r == 0).sum()) for r in hist_items))
    query_ids = [fixed_ids] * len(live) if fixed is not None else \
        [np.asarray([vocab.condition_id(q) for q in qs], dtype=np.int64) for qs in query_names]
    n_per = [len(q) for q in query_names]
    learned = bool(getattr(model, "has_cond_head", False))
    pieces, raw_prior = [], []
    timed = query_ts is not None
    temperature = model_temperature(model)
    for users in pack_by_budget(tokens_per_user(mode, hist_lens, n_per), forward_budget(mode, token_budget, max(n_per))):
        batch = build_batch(users, hist_items, hist_conds, query_ids, device=device,
                            hist_ts=hist_ts if timed else None, query_ts=query_ts)
        stats.tokens += batch.n_tokens
        emb_b, log_p, pop_w = encode_batch(model, batch, mode, next_cond=learned, popularity=timed)
        if timed:
            emb_b = torch.cat([emb_b, pop_w * temperature], dim=1)
        pieces.append(emb_b.cpu().numpy())
        if learned:
            log_p = log_p.cpu().numpy()
            raw_prior += [log_p[b, q] for b, q in enumerate(query_ids[users])]
    emb = np.concatenate(pieces, axis=0)
    check_embeddings(emb, dim, what=f"user_knowledge ds={ds} users {keep_uid[0]}..{keep_uid[-1]}")
    if not learned:  # history-frequency prior: log(n_c + 1), normalised below
        raw_prior = [np.log1p((h[:, None] == q[None, :]).sum(0)) for h, q in zip(hist_conds, query_ids)]
    logprob = segment_log_softmax(np.concatenate(raw_prior).astype(np.float64), n_per)
    stats.rows += int(sum(n_per))
    return pa.table({
        "ds": pa.array([ds] * len(emb), pa.string()),
        "user_id": pa.array(np.repeat(np.asarray(keep_uid, dtype=np.int64), n_per)),
        "condition": pa.array([c for q in query_names for c in q], pa.string()),
        "embedding": embedding_array(emb),
        "model_version": pa.array([version] * len(emb), pa.string()),
        "history_len": pa.array(np.repeat(np.asarray(hist_lens, dtype=np.int32), n_per)),
        "condition_logprob": pa.array(logprob.astype(np.float32)),
        "temperature": pa.array(np.full(len(emb), temperature, dtype=np.float32)),
    })


def model_temperature(model: Any) -> float:
    """T = 1 / the model's logit scale (the scale its InfoNCE logits <o, e> were trained under)."""
    return float(1.0 / float(model.logit_scale.detach().float()))


def segment_log_softmax(values: np.ndarray, lengths: list[int]) -> np.ndarray:
    """log-softmax of ``values`` (sum lengths,) within consecutive segments of ``lengths`` (each >= 1)."""
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    seg = np.repeat(np.arange(len(lengths)), lengths)
    top = np.maximum.reduceat(values, starts)
    shifted = values - top[seg]
    lse = np.log(np.add.reduceat(np.exp(shifted), starts))
    out = shifted - lse[seg]
    if not np.isfinite(out).all():
        raise ValueError(f"condition_logprob: {int((~np.isfinite(out)).sum())} non-finite value(s)")
    return out
