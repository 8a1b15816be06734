"""Next-condition-item InfoNCE: the output at condition token c_l scores its item i_l against negatives.

    loss = mean_l -log( exp(s(o_l, e_{i_l})) / sum_{j in C} exp(s(o_l, e_j)) ),   s(o, e) = scale * <o, e>

o and e are unit vectors; ``scale`` = 1/temperature, clamped to <= 100 as in CLIP. C is the *unique* items of
the batch's targets (a repeated item is never its own negative) plus ``sampled`` extra items. The optional
logQ correction subtracts log q(j), the item's share of training events, from each candidate's logit (Yi et
al. 2019). Only condition positions are scored: callers pass their outputs, never item tokens.
``next_condition_loss``: the output at item token i_{l-1} predicts c_l within one sequence; the loop adds
weight * its sum to the InfoNCE sum and divides both by the condition positions of the global batch, so the
total depends neither on packing nor on the DDP split.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce_loss(queries: torch.Tensor, targets: torch.Tensor, item_table, *, scale: torch.Tensor | float,
                  sampled: torch.Tensor | None = None, log_q: torch.Tensor | None = None,
                  weights: torch.Tensor | None = None, accuracy: bool = True,
                  bias=None) -> tuple[torch.Tensor, dict]:
    """InfoNCE over in-batch (+ sampled) candidates; returns (scalar loss, {"candidates": C, "accuracy": a}).

    queries (P, D) unit-norm condition-position outputs; targets (P,) int64 item rows; item_table: rows (C,) ->
    (C, D) unit-norm embeddings; scale: 1/temperature; sampled (K,) extra rows or None; log_q (n_item_rows,) or
    None; weights (P,), default 1: loss = sum(w * nll) / sum(w). ``a``: the top-1 hit rate among candidates
    when ``accuracy`` (an extra argmax over (P, C) logits), else None. ``bias``: cands (C,) -> (P, C) float logit
    bonus (a time-aware model's popularity weights). Mismatched shapes: ``ValueError``.
    """
    if queries.ndim != 2 or targets.ndim != 1 or queries.shape[0] != targets.shape[0]:
        raise ValueError(f"info_nce_loss: queries {tuple(queries.shape)} and targets {tuple(targets.shape)} mismatch")
    pool = targets if sampled is None else torch.cat([targets, sampled.to(targets.device)])
    cands, inverse = torch.unique(pool, return_inverse=True)
    labels = inverse[: targets.shape[0]]
    emb = item_table(cands)                                   # (C, D)
    logits = ((queries * scale) @ emb.t().to(queries.dtype)).float()  # scale folded in: one pass fewer
    if log_q is not None:
        logits = logits - log_q[cands].to(logits.dtype)
    if bias is not None:
        logits = logits + bias(cands).to(logits.dtype)
    nll = F.cross_entropy(logits, labels, reduction="none")
    if weights is None:
        loss = nll.mean()
    else:
        loss = (nll * weights).sum() / weights.sum().clamp_min(1e-12)
    acc = None
    if accuracy:
        with torch.no_grad():
            acc = (logits.argmax(dim=1) == labels).float().mean().item() if labels.numel() else 0.0
    return loss, {"candidates": int(cands.numel()), "accuracy": acc}


def sample_negatives(n: int, probs: torch.Tensor | None, n_rows: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` negative item rows: from ``probs`` (n_item_rows,) when given (popularity), else uniform over
    rows 1..n_rows-1 (never the OOV row 0)."""
    if n <= 0:
        return torch.zeros(0, dtype=torch.long)
    if probs is not None:
        return torch.multinomial(probs, n, replacement=True, generator=generator)
    return torch.randint(1, max(2, n_rows), (n,), generator=generator)


def popularity_log_q(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(probs, log_q) from per-row event counts (n_item_rows,); unseen rows get a floor of 1 count."""
    c = counts.to(torch.float64).clamp_min(1.0)
    c[0] = 1.0
    probs = c / c.sum()
    return probs.to(torch.float32), probs.log().to(torch.float32)


def next_condition_loss(logits: list[torch.Tensor], conds: torch.Tensor, cond_features: torch.Tensor,
                        cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum of next-condition cross-entropies: item token i_n predicts c_{n+1} of the SAME sequence.

    logits: per condition feature k, (N, n_values_k) from the item-token states (LUM.cond_logits); conds (N,)
    packed condition ids; cond_features (n_conditions, K) value index per feature; cu_seqlens (B+1,). A
    sequence's last behaviour has no target, so packing never leaks across sequences. Each target adds
    sum_k CE(logits_k, f_k(c_{n+1})). Returns (sum, number of targets = N - B for non-empty sequences).
    """
    N = conds.shape[0]
    if any(lg.shape[0] != N for lg in logits):
        raise ValueError(f"next_condition_loss: logits rows {[lg.shape[0] for lg in logits]} != conds {N}")
    cu = cu_seqlens.to(device=conds.device, dtype=torch.long)
    has_next = torch.ones(N, dtype=torch.bool, device=conds.device)
    ends = cu[1:][cu[1:] > cu[:-1]] - 1
    has_next[ends] = False
    src = torch.nonzero(has_next).squeeze(1)
    tgt = cond_features.to(conds.device)[conds[src + 1]]              # (P, K)
    total = logits[0].new_zeros((), dtype=torch.float32) if logits else torch.zeros(())
    for k, lg in enumerate(logits):
        total = total + F.cross_entropy(lg[src].float(), tgt[:, k], reduction="sum")
    return total, int(src.numel())
