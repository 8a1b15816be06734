"""The logistic-regression consumer of ``lum evaluate --consumer lr``: a linear model over a few strong features.

Baseline features, from the TRAIN rows only (test labels never feed a feature): the user's and the item's
positive rate, smoothed towards the global train rate with ``PRIOR`` pseudo-rows, and log(1 + the item's train
rows). A train row leaves itself out of its own rates and count, so a feature never contains the row's label.
Users and items without train rows get the global rate and 0. The with-LUM run adds ``lum_target_match``,
``lum_target_match_disliked``, the ``lum_match`` vector, ``lum_user . lum_item`` and its D terms
``lum_user[k] * lum_item[k]`` (each in ``lum_columns``; the disliked one only where some row has it) and a
has-knowledge flag (nulls -> 0). The terms let a linear model weight the knowledge dimensions for its own label
(the knowledge is trained to predict the next item, the consumer's label may be another event), which the
plain dot cannot. Features are standardised with the train mean and deviation; the fit is Newton's method on
the L2-penalised log loss (``l2``, the intercept unpenalised), deterministic.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stages.evaluate.features import LUM_COLUMNS, SCALAR_COLUMNS, _list_matrix, _width
from stages.evaluate.metrics import auc

PRIOR = 20.0  # pseudo-rows at the global rate in each positive-rate estimate
NEWTON_STEPS = 50  # the penalised log loss is strictly convex: Newton converges in far fewer


@dataclass
class LRData:
    """Feature matrices of both splits: base (n, 3) and LUM (n, K) columns, labels and the has-knowledge flag."""

    train_base: np.ndarray
    test_base: np.ndarray
    train_lum: np.ndarray
    test_lum: np.ndarray
    train_label: np.ndarray
    test_label: np.ndarray
    train_has: np.ndarray
    test_has: np.ndarray
    lum_names: list[str]


def _rate(keys: np.ndarray, labels: np.ndarray, query: np.ndarray, global_rate: float,
          leave_out: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(smoothed positive rate, row count) of each ``query`` key over (keys, labels); ``leave_out`` (the query
    rows' own labels, when the query rows are the train rows) is subtracted first."""
    uniq, inv = np.unique(keys, return_inverse=True)
    pos = np.bincount(inv, weights=labels, minlength=len(uniq))
    cnt = np.bincount(inv, minlength=len(uniq)).astype(np.float64)
    at = np.clip(np.searchsorted(uniq, query), 0, max(len(uniq) - 1, 0))
    hit = (uniq[at] == query) if len(uniq) else np.zeros(query.shape, bool)
    p, n = np.where(hit, pos[at], 0.0), np.where(hit, cnt[at], 0.0)
    if leave_out is not None:
        p, n = p - leave_out, n - 1.0
    return (p + PRIOR * global_rate) / (n + PRIOR), n


def base_features(train: pa.Table, test: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(n_train, 3), (n_test, 3): user positive rate, item positive rate, log1p item popularity (train rows)."""
    y = np.asarray(train.column("label").to_numpy(zero_copy_only=False), np.float64)
    rate = float(y.mean()) if y.size else 0.0
    out = []
    for table, own in ((train, y), (test, None)):
        user_rate, _ = _rate(train.column("user_id").to_numpy(), y, table.column("user_id").to_numpy(), rate, own)
        item_rate, n = _rate(train.column("item_id").to_numpy(), y, table.column("item_id").to_numpy(), rate, own)
        out.append(np.stack([user_rate, item_rate, np.log1p(n)], axis=1))
    return out[0], out[1]


def lum_features(table: pa.Table, columns: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """((n, K) LUM features, (n,) has-knowledge, their names); the flag is the last feature."""
    parts, names, has = [], [], np.zeros(table.num_rows, bool)
    for name in columns:
        if name not in LUM_COLUMNS:
            raise ValueError(f"lum_columns: unknown column {name!r}; choose from {list(LUM_COLUMNS)}")
    for name in (c for c in SCALAR_COLUMNS if c in columns):
        v = np.asarray(pc.fill_null(table.column(name), np.nan).to_numpy(zero_copy_only=False), np.float64)
        has |= ~np.isnan(v)
        parts.append(np.nan_to_num(v)[:, None])
        names.append(name)
    if "lum_match" in columns:
        m, valid = _list_matrix(table.column("lum_match"), _width(table.column("lum_match")))
        has |= valid
        parts.append(m)
        names += [f"lum_match[{i}]" for i in range(m.shape[1])]
    if "lum_user" in columns and "lum_item" in columns:
        u, uv = _list_matrix(table.column("lum_user"), _width(table.column("lum_user")))
        i, iv = _list_matrix(table.column("lum_item"), _width(table.column("lum_item")))
        if u.shape[1] != i.shape[1]:
            raise ValueError(f"lum_user has {u.shape[1]} values per row but lum_item {i.shape[1]}; "
                             "they must come from one model version")
        has |= uv & iv
        parts += [(u * i).sum(axis=1, keepdims=True), u * i]  # the dot, then its terms for a learned weighting
        names += ["lum_user.lum_item"] + [f"lum_user*lum_item[{k}]" for k in range(u.shape[1])]
    parts.append(has[:, None].astype(np.float64))
    return np.concatenate(parts, axis=1).astype(np.float64), has, names + ["has_knowledge"]


def build(train: pa.Table, test: pa.Table, lum_columns: tuple[str, ...]) -> LRData:
    tr_base, te_base = base_features(train, test)
    tr_lum, tr_has, names = lum_features(train, lum_columns)
    te_lum, te_has, _ = lum_features(test, lum_columns)
    label = lambda t: np.asarray(t.column("label").to_numpy(zero_copy_only=False), np.float64)  # noqa: E731
    return LRData(tr_base, te_base, tr_lum, te_lum, label(train), label(test), tr_has, te_has, names)


def fit(x: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
    """Weights (intercept first) of the L2-penalised logistic regression of y on x (already standardised)."""
    X = np.concatenate([np.ones((x.shape[0], 1)), x], axis=1)
    w = np.zeros(X.shape[1])
    penalty = np.full(X.shape[1], l2)
    penalty[0] = 0.0
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-(X @ w)))
        grad = X.T @ (p - y) + penalty * w
        hess = (X * (p * (1 - p))[:, None]).T @ X + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def train_and_score(data: LRData, *, l2: float, use_lum: bool) -> dict[str, Any]:
    """Fit on the train rows, score the test rows: AUC overall and on the test rows with knowledge."""
    started = time.perf_counter()
    names = ["user_positive_rate", "item_positive_rate", "item_log_popularity"] + (data.lum_names if use_lum else [])
    x_tr = np.concatenate([data.train_base, data.train_lum], 1) if use_lum else data.train_base
    x_te = np.concatenate([data.test_base, data.test_lum], 1) if use_lum else data.test_base
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    w = fit((x_tr - mean) / std, data.train_label, l2)
    logits = w[0] + ((x_te - mean) / std) @ w[1:]
    p_tr = 1.0 / (1.0 + np.exp(-(w[0] + ((x_tr - mean) / std) @ w[1:])))
    eps = 1e-12
    loss = float(-np.mean(data.train_label * np.log(p_tr + eps) + (1 - data.train_label) * np.log(1 - p_tr + eps)))
    test_auc = auc(data.test_label, logits)
    has = data.test_has
    covered = auc(data.test_label[has], logits[has]) if has.any() else float("nan")
    return {"auc": test_auc, "auc_with_knowledge": covered,
            "epochs": [{"epoch": 1, "train_loss": loss, "test_auc": test_auc, "test_auc_with_knowledge": covered}],
            "params": int(w.size), "dense_dim": len(names) - 3, "features": names,
            "weights": dict(zip(["intercept"] + names, np.round(w, 5).tolist())),
            "seconds": round(time.perf_counter() - started, 2)}
