"""Leave-last-out next-item retrieval: HR@10 and NDCG@10 with full ranking over all items.

The README's protocol (the SASRec / HSTU ML-1M tables): per user with >= 3 behaviours the last item is the test
target and the one before it the validation target; histories are cut to the model's ``history_len``; items of
the history window cannot be recommended (``filter_seen``; a target inside it is a miss). Every item of the data
set is ranked, never the OOV row; ties count against the target.
- ``hr@10`` / ``ndcg@10``: score(i) = log p(c(i) | history) + log_softmax over items of s_c(i), one grouped
  query per category; p(c | history) is the next-condition head, or an add-1 smoothed category frequency of
  the history (``prior``). Nothing about the target is used. ``unfiltered_*``: the same without the filter;
  ``raw_own_cond_*``: raw <o(c(i)), e_i>, uncalibrated across categories, a diagnostic only.
- ``target_cond_*``: one query under the target's own condition; it knows the answer's category, so it is
  reported apart. Cost: users x categories queries and one (users, items) score matrix per chunk.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from stages.model.timefeat import epoch_day

log = logging.getLogger(__name__)


def split_leave_last_out(items: list[np.ndarray], conds: list[np.ndarray], ts: list[np.ndarray] | None = None):
    """Per user: (train prefix, valid (hist, target), test (hist, target)); users with < 3 behaviours
    get None for valid/test and train on all they have (at least the c1 -> i1 prior). With ``ts`` (epoch seconds
    per behaviour) the train prefix is (items, conds, ts) and each case ends with (history ts, target ts)."""
    out = []
    for u, (it, cd) in enumerate(zip(items, conds)):
        t = None if ts is None else ts[u]
        if len(it) < 3:
            out.append(((it, cd) if t is None else (it, cd, t), None, None))
            continue
        if t is None:
            out.append(((it[:-2], cd[:-2]), (it[:-2], cd[:-2], int(it[-2]), int(cd[-2])),
                        (it[:-1], cd[:-1], int(it[-1]), int(cd[-1]))))
        else:
            out.append(((it[:-2], cd[:-2], t[:-2]), (it[:-2], cd[:-2], int(it[-2]), int(cd[-2]), t[:-2], int(t[-2])),
                        (it[:-1], cd[:-1], int(it[-1]), int(cd[-1]), t[:-1], int(t[-1]))))
    return out


@torch.no_grad()
def evaluate(model, vocab, cases: list[tuple[np.ndarray, np.ndarray, int, int]], *, k: int = 10,
             chunk_users: int = 256, backend: str = "auto", candidate_rows: np.ndarray | None = None,
             prior_alpha: float = 1.0, prior: str = "auto", filter_seen: bool = True, popularity=None) -> dict:
    """HR@k/NDCG@k of ``cases`` (history items, history conds, target item row, target cond id).

    candidate_rows: the items ranked (default: every vocabulary item; pretrain passes those of the data set).
    prior: "auto" (the learned head if any, else frequency, add-``prior_alpha`` smoothed) | "learned" |
    "frequency"; filter_seen: drop the history window's items from each ranking. popularity: a time-aware model's
    ``Popularity`` (cases then carry (history ts, target ts)): queries are asked at the target's time and each
    candidate gets the query's weight of its bucket on the target's day. Returns "users", "hr@k",
    "ndcg@k", "prior", "target_cond_*", "raw_own_cond_*", "unfiltered_*", "frequency_prior_*" (k in the names).
    """
    if prior not in ("auto", "learned", "frequency"):
        raise ValueError(f"prior must be auto|learned|frequency, got {prior!r}")
    has_head = bool(getattr(model, "has_cond_head", False))
    if prior == "learned" and not has_head:
        raise ValueError("prior='learned' needs a model with the next-condition head (cond_loss_weight > 0)")
    learned = has_head and prior != "frequency"
    model.eval()
    dev = next(model.parameters()).device
    history_len = model.cfg.history_len
    item_cond = torch.from_numpy(vocab.item_conditions()).to(dev)       # (n_rows,)
    cat_conds = torch.unique(item_cond[1:])                              # condition per category
    n_c = cat_conds.numel()
    col_of = torch.full((vocab.n_conditions,), -1, dtype=torch.long, device=dev)
    col_of[cat_conds] = torch.arange(n_c, device=dev)
    item_col = col_of[item_cond]                                          # (n_rows,) query column per item
    own_col = item_col[1:].clamp(min=0)                                   # (n_items,) per candidate column
    E = model.item_embeddings().float()                                   # (n_rows, D)
    excluded = torch.ones(E.shape[0] - 1, dtype=torch.bool, device=dev)   # columns = rows 1..n
    if candidate_rows is None:
        excluded[:] = False
    else:
        excluded[torch.as_tensor(candidate_rows, dtype=torch.long, device=dev) - 1] = False
    hits = ndcg = t_hits = t_ndcg = raw_hits = raw_ndcg = f_hits = f_ndcg = u_hits = u_ndcg = 0.0
    n = 0
    for start in range(0, len(cases), chunk_users):
        chunk = cases[start:start + chunk_users]
        hist_i = [c[0][-history_len:] for c in chunk]
        hist_c = [c[1][-history_len:] for c in chunk]
        lens = np.array([len(h) for h in hist_i])
        cu_h = torch.tensor(np.concatenate([[0], np.cumsum(lens)]), dtype=torch.int32, device=dev)
        hi = torch.from_numpy(np.concatenate(hist_i).astype(np.int64)).to(dev)
        hc = torch.from_numpy(np.concatenate(hist_c).astype(np.int64)).to(dev)
        B = len(chunk)
        timed = popularity is not None
        time_kw = {}
        if timed:
            hts = torch.from_numpy(np.concatenate([c[4][-history_len:] for c in chunk]).astype(np.int64)).to(dev)
            qts = torch.tensor([c[5] for c in chunk], dtype=torch.int64, device=dev)
            time_kw = {"hist_ts": hts, "query_ts": qts, "with_popularity": True}
        targets = torch.tensor([c[2] for c in chunk], device=dev)
        t_conds = torch.tensor([c[3] for c in chunk], device=dev)
        # queries per user: every category condition, then the target's own condition
        q = torch.cat([cat_conds.repeat(B, 1), t_conds[:, None]], dim=1).reshape(-1)
        cu_q = torch.arange(0, (n_c + 1) * B + 1, n_c + 1, dtype=torch.int32, device=dev)
        res = model.encode_grouped(hi, hc, cu_h, q, cu_q, backend=backend, with_next_cond=learned, **time_kw)
        res = list(res) if isinstance(res, tuple) else [res]
        o = res.pop(0)
        log_p_cond = res.pop(0) if learned else None
        o = o.float().view(B, n_c + 1, -1)
        # comparable: item i scored under its own category's query
        scale = model.logit_scale.float()
        per_cond = torch.einsum("bcd,nd->bcn", o[:, :n_c], E[1:]) * scale    # (B, C, n_items)
        t_bias = 0.0
        if timed:  # (B, C+1, P) weights; bucket of every item on each target's day
            w = res.pop(0).float().view(B, n_c + 1, -1)
            for bk in popularity.columns(epoch_day(qts), torch.arange(1, E.shape[0], device=dev)):  # (B, n_items)
                per_cond = per_cond + w[:, :n_c].gather(2, bk[:, None, :].expand(B, n_c, -1))
                t_bias = t_bias + w[:, n_c].gather(1, bk)
        per_cond = per_cond.masked_fill(excluded, float("-inf"))
        user_of = torch.repeat_interleave(torch.arange(B, device=dev), torch.from_numpy(lens).to(dev))
        seen = torch.zeros(B, E.shape[0] - 1, dtype=torch.bool, device=dev)   # (B, n_items)
        if filter_seen:
            known = hi > 0                                                  # the OOV row is never a column
            seen[user_of[known], hi[known] - 1] = True
        own = own_col[None, None, :].expand(B, 1, -1)
        raw = per_cond.gather(1, own).squeeze(1)
        r = _rank(raw.masked_fill(seen, float("-inf")), targets - 1)
        raw_hits += float((r < k).sum())
        raw_ndcg += float(_ndcg(r, k).sum())
        # calibrated: log p(c(i) | history) + log p(i | c(i), history)
        log_p_item = torch.log_softmax(per_cond, dim=2).gather(1, own).squeeze(1)
        hist_cols = item_col[hi].clamp(min=0)
        counts = torch.zeros(B, n_c, device=dev).index_put_(
            (user_of, hist_cols), torch.ones_like(hi, dtype=torch.float), accumulate=True)
        freq_prior = torch.log((counts + prior_alpha) / (counts.sum(1, keepdim=True) + prior_alpha * n_c))
        freq_scores = freq_prior.gather(1, own_col[None, :].expand(B, -1)) + log_p_item
        r = _rank(freq_scores.masked_fill(seen, float("-inf")), targets - 1)
        f_hits += float((r < k).sum())
        f_ndcg += float(_ndcg(r, k).sum())
        if learned:  # the head's distribution restricted to the category conditions, renormalised
            log_prior = torch.log_softmax(log_p_cond.float()[:, cat_conds], dim=1)
            comparable = log_prior.gather(1, own_col[None, :].expand(B, -1)) + log_p_item
        else:
            comparable = freq_scores
        r = _rank(comparable, targets - 1)
        u_hits += float((r < k).sum())
        u_ndcg += float(_ndcg(r, k).sum())
        r = _rank(comparable.masked_fill(seen, float("-inf")), targets - 1)
        hits += float((r < k).sum())
        ndcg += float(_ndcg(r, k).sum())
        t_scores = o[:, n_c] @ E[1:].t() * scale + t_bias
        tr = _rank(t_scores.masked_fill(excluded, float("-inf")).masked_fill(seen, float("-inf")), targets - 1)
        t_hits += float((tr < k).sum())
        t_ndcg += float(_ndcg(tr, k).sum())
        n += B
    d = max(n, 1)
    return {"users": n, f"hr@{k}": round(hits / d, 4), f"ndcg@{k}": round(ndcg / d, 4),
            f"target_cond_hr@{k}": round(t_hits / d, 4), f"target_cond_ndcg@{k}": round(t_ndcg / d, 4),
            f"raw_own_cond_hr@{k}": round(raw_hits / d, 4), f"raw_own_cond_ndcg@{k}": round(raw_ndcg / d, 4),
            "prior": "learned" if learned else "frequency",
            # the same pass under the history-frequency prior (equal to hr/ndcg when that is the prior)
            f"frequency_prior_hr@{k}": round(f_hits / d, 4), f"frequency_prior_ndcg@{k}": round(f_ndcg / d, 4),
            f"unfiltered_hr@{k}": round(u_hits / d, 4), f"unfiltered_ndcg@{k}": round(u_ndcg / d, 4)}


def _ndcg(rank: torch.Tensor, k: int) -> torch.Tensor:
    return torch.where(rank < k, 1.0 / torch.log2(rank.float() + 2), torch.zeros_like(rank, dtype=torch.float))


def _rank(scores: torch.Tensor, target_cols: torch.Tensor) -> torch.Tensor:
    """0-based rank of each target among all columns (ties counted against the target)."""
    t = scores.gather(1, target_cols[:, None])
    return (scores >= t).sum(dim=1) - 1


def ndcg_at(rank: int, k: int = 10) -> float:
    """NDCG@k of one target at 0-based ``rank`` (1/log2(rank+2) inside the top k)."""
    return 1.0 / math.log2(rank + 2) if rank < k else 0.0
