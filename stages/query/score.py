"""Scoring items from the knowledge tables alone, and ranking a target among them (pure numpy).

The score of item i for user u, c = the item's condition column (its category), T = the model's temperature:

    score(u, i) = condition_logprob(u, c) + <o(u, c), e_i> / T - logsumexp_{j in c} <o(u, c), e_j> / T

= log p(c | history) + log p(i | history, c), the item term a softmax over the catalog items of c (every
item of c with an embedding, seen or not: filtering is a ranking choice, not part of the distribution).
Items without a column (no category, no embedding) or whose column the user has no knowledge for score -inf.
Shapes: U users, C condition columns, D dims, I items. Computed one column at a time (one (U, D) x (D, I_c)
product each), in float64.
"""

from __future__ import annotations

import numpy as np


def knowledge_scores(user_emb: np.ndarray, user_has: np.ndarray, cond_logprob: np.ndarray,
                     temperature: np.ndarray, item_emb: np.ndarray, item_col: np.ndarray) -> np.ndarray:
    """(U, I) float64 scores.

    user_emb (U, C, D) o(u, c); user_has (U, C) bool, a knowledge row exists; cond_logprob (U, C);
    temperature (U,) T of the row's model version (> 0); item_emb (I, D) e_i; item_col (I,) int, the column
    of each item's condition or -1 (never scored)."""
    U, C, D = user_emb.shape
    item_col = np.asarray(item_col)
    if user_has.shape != (U, C) or cond_logprob.shape != (U, C) or temperature.shape != (U,):
        raise ValueError(f"knowledge_scores: user arrays disagree: emb {user_emb.shape}, has {user_has.shape}, "
                         f"logprob {cond_logprob.shape}, temperature {temperature.shape}")
    if item_emb.shape != (item_col.shape[0], D):
        raise ValueError(f"knowledge_scores: item_emb {item_emb.shape} does not match ({item_col.shape[0]}, {D})")
    if item_col.size and int(item_col.max(initial=-1)) >= C:
        raise ValueError(f"knowledge_scores: item_col holds column {int(item_col.max())} >= C = {C}")
    out = np.full((U, item_col.shape[0]), -np.inf)
    inv_t = 1.0 / np.asarray(temperature, dtype=np.float64)[:, None]
    for c in range(C):
        cols = np.flatnonzero(item_col == c)
        if cols.size == 0:
            continue
        logits = (user_emb[:, c, :].astype(np.float64) @ item_emb[cols].astype(np.float64).T) * inv_t  # (U, I_c)
        top = logits.max(axis=1, keepdims=True)
        lse = top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True))
        scores = cond_logprob[:, c, None].astype(np.float64) + logits - lse
        scores[~user_has[:, c]] = -np.inf
        out[:, cols] = scores
    return out


def target_ranks(scores: np.ndarray, targets: np.ndarray, excluded: np.ndarray | None = None) -> np.ndarray:
    """(U,) 0-based rank of each user's target column among the columns not ``excluded`` (U, I) bool.

    Ties count against the target (an equal score ranks above it). A target that is excluded or scores
    -inf cannot be recommended: its rank is I (a miss at any cutoff)."""
    scores = np.asarray(scores, dtype=np.float64)
    rows = np.arange(scores.shape[0])
    t = scores[rows, targets]
    live = np.ones(scores.shape, bool) if excluded is None else ~excluded
    above = ((scores >= t[:, None]) & live).sum(axis=1) - 1
    dead = ~live[rows, targets] | np.isneginf(t)
    return np.where(dead, scores.shape[1], above)


def hit_ndcg(ranks: np.ndarray, k: int) -> tuple[float, float]:
    """(HR@k, NDCG@k) of 0-based ranks: a hit is rank < k, its gain 1 / log2(rank + 2); (nan, nan) if empty."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        return float("nan"), float("nan")
    hit = ranks < k
    gain = np.where(hit, 1.0 / np.log2(np.minimum(ranks, k) + 2.0), 0.0)
    return float(hit.mean()), float(gain.mean())


def top_k(scores: np.ndarray, k: int, excluded: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(U, k') columns and scores of the k best finite scores per row, best first (k' = min(k, I));
    excluded and -inf columns come last with score -inf. Ties: lower column first (stable)."""
    s = np.asarray(scores, dtype=np.float64)
    if excluded is not None:
        s = np.where(excluded, -np.inf, s)
    k = min(int(k), s.shape[1])
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(s, order, axis=1)
