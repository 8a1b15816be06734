"""``lum evaluate``: does the LUM knowledge help a ranking model? The reference DLRM, with vs without.

Split (time-based, no shuffling across it): train on ``dlrm_training`` days [train_start, train_end],
test on days (train_end, test_end]. Both runs use the same rows, seed, hyperparameters and sparse
features; the only difference is the LUM dense input (``Config.lum_columns``). Test AUC of each, the
lift (with - without), and the loss curves go to ``<out_dir>/evaluate.json`` and ``evaluate.png``.

Features (all built point-in-time correct from the rows themselves and the dimensions):
- sparse: user_id, item_id, items.category, users.age / gender / occupation, scenario, hour of day and
  weekday of ts. Vocabularies come from the TRAIN rows only; unseen test values map to index 0.
- history (DIN): the user's last ``history_len`` items with ts strictly before the sample's ts, taken
  from the loaded window (train + test days: a test sample may look at earlier test-day behaviour, never
  at its own or later) and from ``events`` of the ``history_days`` days before ``train_start`` (default
  365), so the baseline sees the same past behaviour the LUM was pretrained on: the comparison measures
  what the LUM adds, not access to history. ``history_days = 0``: only the loaded window.
- dense LUM (with-LUM run only): lum_target_match (1), lum_match (N), lum_user (D), lum_item (D) and a
  has-knowledge flag; null -> 0. ``rating`` is never a feature (label = rating >= 4).

Both AUCs are also reported on the test rows that have knowledge (``lift_with_knowledge``): on
MovieLens most users rate in one burst, so a sample of day D often has no knowledge from before D
(ML-1M: ~35-40% of the ratings of a day come from users seen on an earlier day; ML-100K: fewer).

AUC is the rank statistic (Mann-Whitney U / (n_pos n_neg), ties count 1/2), O(n log n).

ML-1M (the paper: LUM 0.7615 vs SIM 0.7579 AUC; Table 4 lifts +0.0053..+0.0176). Nov-Dec 2000 hold
404k of the 1M ratings; knowledge of D-1 (lag 1) for every day, all 18 genre conditions:
    lum ingest movielens-1m
    printf '[infer]\nconditions = "all"\n' > ml1m.toml
    lum backfill --start 2000-10-31 --end 2000-12-31 --config ml1m.toml
    lum evaluate --train-start 2000-11-01 --train-end 2000-12-15 --test-end 2000-12-31 --out reports/evaluate_ml1m
(weekly knowledge also works: the join takes the newest partition <= D - 1, recorded in lum_knowledge_ds).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stages.core.dates import check_ds

log = logging.getLogger(__name__)

LUM_COLUMNS = ("lum_target_match", "lum_match", "lum_user", "lum_item")
SPARSE_FIELDS = ("user_id", "item_id", "category", "age", "gender", "occupation", "scenario", "hour", "weekday")
ITEM_FIELD = SPARSE_FIELDS.index("item_id")


@dataclass(frozen=True)
class Config:
    """Hyperparameters shared by the with- and without-LUM runs."""

    seed: int = 0  # one seed for both runs: same init of shared modules, same batch order
    epochs: int = 2  # ML-1M ids overfit after ~2 epochs; the best-epoch test AUC is not used (no peeking)
    batch_size: int = 1024  # large enough for CPU throughput, small enough for ~1k steps/epoch on ML-1M
    lr: float = 2e-3  # Adam; tiny model, short schedule
    weight_decay: float = 0.0  # regularisation comes from dropout and the short schedule
    emb_dim: int = 16  # per-field embedding width (stages.model.dlrm.DLRMConfig)
    mlp_hidden: tuple[int, ...] = (128, 64)  # top MLP
    dropout: float = 0.1  # top MLP dropout
    history_len: int = 20  # DIN history length; 0 disables the attention
    history_days: int = 365  # DIN history also reads events of this many days before train_start; 0 = none
    lum_columns: tuple[str, ...] = LUM_COLUMNS  # dense LUM inputs of the with-LUM run
    threads: int = 1  # torch intra-op threads (the machine has 2 cores shared by everyone)


# ---- AUC ----------------------------------------------------------------------------------------
def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC = P(score_pos > score_neg) + 0.5 P(tie), from average ranks; nan if one class is absent."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ in shape")
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    # average rank (1-based) of each run of equal scores
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], scores.size]
    avg = (starts + ends + 1) / 2.0
    ranks = np.empty(scores.size)
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


# ---- features -----------------------------------------------------------------------------------
@dataclass
class Features:
    """Model inputs of one split: sparse (n, F) int64, history (n, H) int64, dense (n, K) f32, label (n,)."""

    sparse: np.ndarray
    history: np.ndarray
    dense: np.ndarray
    label: np.ndarray


def _list_matrix(col: pa.ChunkedArray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A list<float> column -> ((n, width) float32 with nulls as 0, (n,) bool valid)."""
    arr = col.combine_chunks()
    n = len(arr)
    out = np.zeros((n, width), np.float32)
    valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), bool)
    if width == 0 or not valid.any():
        return out, valid
    sub = arr.filter(pa.array(valid))
    values = sub.flatten().to_numpy(zero_copy_only=False)
    values = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0)  # null elements -> nan -> 0
    lengths = np.asarray(pc.list_value_length(sub).to_numpy(zero_copy_only=False))
    if lengths.size and (lengths.min() != width or lengths.max() != width):
        raise ValueError(f"list column has lengths {lengths.min()}..{lengths.max()}, expected {width}")
    out[valid] = values.reshape(-1, width)
    return out, valid


def _width(col: pa.ChunkedArray) -> int:
    arr = col.combine_chunks()
    if pa.types.is_fixed_size_list(arr.type):
        return arr.type.list_size
    valid = arr.drop_null()
    return int(pc.list_value_length(valid)[0].as_py()) if len(valid) else 0


def dense_lum(table: pa.Table, columns: tuple[str, ...], widths: dict[str, int]) -> np.ndarray:
    """(n, K) float32: the chosen LUM columns side by side, then a has-knowledge flag (K = sum + 1)."""
    parts, has = [], np.zeros(table.num_rows, bool)
    for name in columns:
        if name not in LUM_COLUMNS:
            raise ValueError(f"lum_columns: unknown column {name!r}; choose from {list(LUM_COLUMNS)}")
        col = table.column(name)
        if name == "lum_target_match":
            v = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float32)
            valid = ~np.isnan(v)
            parts.append(np.nan_to_num(v, nan=0.0)[:, None])
        else:
            m, valid = _list_matrix(col, widths[name])
            parts.append(m)
        has |= valid
    parts.append(has[:, None].astype(np.float32))
    return np.concatenate(parts, axis=1)


def _history(users: np.ndarray, ts: np.ndarray, items: np.ndarray, h: int) -> np.ndarray:
    """(n, h) item indices of each row's user's last h rows with ts strictly earlier; 0-padded on the left."""
    n = users.size
    out = np.zeros((n, h), np.int64)
    if h == 0 or n == 0:
        return out
    order = np.lexsort((items, ts, users))
    u, t, it = users[order], ts[order], items[order]
    new_user = np.r_[True, u[1:] != u[:-1]]
    user_start = np.maximum.accumulate(np.where(new_user, np.arange(n), 0))
    new_ts = new_user | np.r_[True, t[1:] != t[:-1]]
    first_same_ts = np.maximum.accumulate(np.where(new_ts, np.arange(n), 0))  # rows before it: ts strictly <
    idx = first_same_ts[:, None] - h + np.arange(h)[None, :]
    ok = idx >= user_start[:, None]
    hist = np.where(ok, it[np.clip(idx, 0, n - 1)], 0)
    out[order] = hist
    return out


def _vocab_index(train_values: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, int]:
    """Map values to 1..V by the sorted train vocabulary; unseen -> 0. Returns (indices, V + 1)."""
    vocab = np.unique(train_values)
    pos = np.searchsorted(vocab, values)
    pos_c = np.clip(pos, 0, max(vocab.size - 1, 0))
    hit = (vocab.size > 0) & (vocab[pos_c] == values) if vocab.size else np.zeros(values.size, bool)
    return np.where(hit, pos_c + 1, 0).astype(np.int64), int(vocab.size) + 1


def build_features(train: pa.Table, test: pa.Table, users: pa.Table | None, items: pa.Table | None,
                   cfg: Config, prior: pa.Table | None = None) -> tuple[Features, Features, list[int], int]:
    """Train/test model inputs; returns (train, test, vocab sizes per sparse field, dense width K).

    prior: history-only behaviours (user_id, item_id, ts) from before the train window (never rows of the
    model, only DIN history; items outside the train vocabulary become padding 0)."""
    import pandas as pd

    n_train = train.num_rows
    both = pa.concat_tables([train.select(test.column_names), test]) if test.num_rows else train
    df = both.select(["user_id", "item_id", "ts", "label", "scenario"]).to_pandas()
    if items is not None and items.num_rows:
        cat = items.select(["item_id", "category"]).to_pandas().drop_duplicates("item_id")
        df = df.merge(cat, on="item_id", how="left")
    else:
        df["category"] = None
    if users is not None and users.num_rows:
        dims = users.select(["user_id", "age", "gender", "occupation"]).to_pandas().drop_duplicates("user_id")
        df = df.merge(dims, on="user_id", how="left")
    else:
        df["age"] = df["gender"] = df["occupation"] = None
    ts = pd.to_datetime(df["ts"], utc=True)
    df["hour"], df["weekday"] = ts.dt.hour, ts.dt.weekday
    sparse, sizes, train_values = [], [], {}
    for name in SPARSE_FIELDS:
        values = df[name].astype(str).to_numpy()
        train_values[name] = values[:n_train]
        idx, size = _vocab_index(train_values[name], values)
        sparse.append(idx)
        sizes.append(size)
    sparse_m = np.stack(sparse, axis=1)
    ts_us = ts.astype("int64").to_numpy()
    h_users, h_ts, h_items = df["user_id"].to_numpy(), ts_us, sparse_m[:, ITEM_FIELD]
    n_prior = prior.num_rows if prior is not None and cfg.history_len else 0
    if n_prior:
        p = prior.select(["user_id", "item_id", "ts"]).to_pandas()
        p_items, _ = _vocab_index(train_values["item_id"], p["item_id"].astype(str).to_numpy())
        h_users = np.concatenate([p["user_id"].to_numpy(), h_users])
        h_ts = np.concatenate([pd.to_datetime(p["ts"], utc=True).astype("int64").to_numpy(), h_ts])
        h_items = np.concatenate([p_items, h_items])
    history = _history(h_users, h_ts, h_items, cfg.history_len)[n_prior:]
    if cfg.lum_columns:
        widths = {c: _width(both.column(c)) for c in ("lum_match", "lum_user", "lum_item") if c in cfg.lum_columns}
        dense = dense_lum(both, tuple(cfg.lum_columns), widths)
    else:
        dense = np.zeros((len(df), 0), np.float32)
    labels = df["label"].fillna(0).to_numpy().astype(np.float32)

    def part(sl: slice) -> Features:
        return Features(sparse_m[sl], history[sl], dense[sl], labels[sl])

    return part(slice(0, n_train)), part(slice(n_train, None)), sizes, dense.shape[1]


# ---- training -----------------------------------------------------------------------------------
def train_and_score(train: Features, test: Features, vocab_sizes: list[int], cfg: Config, *,
                    use_lum: bool) -> dict[str, Any]:
    """Train the reference DLRM (seeded) and return test AUC, per-epoch loss and test AUC, timings."""
    import torch

    from stages.model.dlrm import DLRM, DLRMConfig

    torch.set_num_threads(max(1, cfg.threads))
    torch.manual_seed(cfg.seed)
    dense_dim = train.dense.shape[1] if use_lum else 0
    model = DLRM(DLRMConfig(emb_dim=cfg.emb_dim, mlp_hidden=tuple(cfg.mlp_hidden), dropout=cfg.dropout),
                 vocab_sizes, item_field=ITEM_FIELD, dense_dim=dense_dim, use_history=cfg.history_len > 0)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def tensors(f: Features) -> tuple[torch.Tensor, ...]:
        dense = torch.from_numpy(f.dense) if use_lum else None
        return torch.from_numpy(f.sparse), torch.from_numpy(f.history), dense, torch.from_numpy(f.label)

    xs, xh, xd, y = tensors(train)
    ts_, th, td, _ = tensors(test)
    covered = test.dense[:, -1] > 0 if test.dense.shape[1] else np.zeros(test.label.size, bool)
    gen = torch.Generator().manual_seed(cfg.seed)  # same batch order in both runs
    epochs, started = [], time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(y.shape[0], generator=gen)
        total, count = 0.0, 0
        for start in range(0, y.shape[0], cfg.batch_size):
            b = perm[start:start + cfg.batch_size]
            if b.numel() < 2:  # BatchNorm on the LUM input needs 2+ rows; at most one row skipped per epoch
                continue
            logits = model(xs[b], xh[b], None if xd is None else xd[b])
            loss = loss_fn(logits, y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * b.numel()
            count += b.numel()
        scores = _predict(model, ts_, th, td, cfg.batch_size * 8)
        test_auc = auc(test.label, scores)
        covered_auc = auc(test.label[covered], scores[covered]) if covered.any() else float("nan")
        epochs.append({"epoch": epoch + 1, "train_loss": total / max(count, 1), "test_auc": test_auc,
                       "test_auc_with_knowledge": covered_auc})
        log.info("evaluate %s epoch %d: train loss %.4f, test AUC %.4f", "with LUM" if use_lum else "base",
                 epoch + 1, epochs[-1]["train_loss"], test_auc)
    last = epochs[-1] if epochs else {"test_auc": float("nan"), "test_auc_with_knowledge": float("nan")}
    return {"auc": last["test_auc"], "auc_with_knowledge": last["test_auc_with_knowledge"], "epochs": epochs,
            "params": sum(p.numel() for p in model.parameters()), "dense_dim": dense_dim,
            "seconds": round(time.perf_counter() - started, 2)}


def _predict(model: Any, xs: Any, xh: Any, xd: Any, batch: int) -> np.ndarray:
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, xs.shape[0], batch):
            sl = slice(start, start + batch)
            out.append(model(xs[sl], xh[sl], None if xd is None else xd[sl]).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


# ---- report -------------------------------------------------------------------------------------
def write_plot(report: dict[str, Any], path: str) -> None:
    """Two panels: test AUC of both runs (bars) and their train loss / test AUC per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base, lum = report["without_lum"], report["with_lum"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    names, values = ["without LUM", "with LUM"], [base["auc"], lum["auc"]]
    bars = ax1.bar(names, values, color=["#999999", "#1f77b4"])
    for bar, v in zip(bars, values):
        ax1.text(bar.get_x() + bar.get_width() / 2, v, f"{v:.4f}", ha="center", va="bottom")
    lo = min(v for v in values if not math.isnan(v)) if not all(math.isnan(v) for v in values) else 0.5
    ax1.set_ylim(max(0.0, lo - 0.05), min(1.0, max(values) + 0.03) if not math.isnan(max(values)) else 1.0)
    ax1.set_title(f"test AUC (lift {report['lift']:+.4f})")
    for run, style in ((base, "--"), (lum, "-")):
        ep = [e["epoch"] for e in run["epochs"]]
        ax2.plot(ep, [e["test_auc"] for e in run["epochs"]], style, marker="o",
                 label=f"test AUC {'with' if run is lum else 'without'} LUM")
    ax2.set_xticks([e["epoch"] for e in base["epochs"]])
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("test AUC")
    ax2.legend()
    ax2.set_title(f"train {report['train_start']}..{report['train_end']}, test ..{report['test_end']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_evaluate(cfg: Config, *, train_start: str, train_end: str, test_end: str, out_dir: str,
                 warehouse: str) -> dict[str, Any]:
    """Train without and with LUM on [train_start, train_end], test on (train_end, test_end]."""
    from stages.core.dates import next_day
    from stages.warehouse.facade import Warehouse

    for name, value in (("train_start", train_start), ("train_end", train_end), ("test_end", test_end)):
        check_ds(value, name=name)
    if not train_start <= train_end < test_end:
        raise ValueError(f"need train_start <= train_end < test_end, got {train_start}, {train_end}, {test_end}")
    started = time.perf_counter()
    wh = Warehouse.of(warehouse)
    if not wh.exists("dlrm_training"):
        raise ValueError("table dlrm_training does not exist; run `lum run join` first")
    train = wh.read("dlrm_training", start=train_start, end=train_end)
    test = wh.read("dlrm_training", start=next_day(train_end), end=test_end)
    for name, t in (("train", train), ("test", test)):
        if t.num_rows == 0 or len(set(t.column("label").to_pylist())) < 2:
            raise ValueError(f"dlrm_training has no {name} rows with both labels in that window")
    users = wh.read("users") if wh.exists("users") else None
    items = wh.read("items") if wh.exists("items") else None
    prior = None
    if cfg.history_days > 0 and cfg.history_len > 0 and wh.exists("events"):
        from stages.core.dates import days_before, prev_day

        first = days_before(train_start, cfg.history_days)
        prior = wh.read("events", start=first, end=prev_day(train_start), columns=["user_id", "item_id", "ts"])
        log.info("evaluate: DIN history also from %d events of %s..%s", prior.num_rows, first, train_start)
    tr, te, sizes, k = build_features(train, test, users, items, cfg, prior=prior)
    if cfg.lum_columns and not te.dense[:, -1].any():
        raise ValueError(f"dlrm_training has no LUM features in test days after {train_end}; run infer and join")
    base = train_and_score(tr, te, sizes, cfg, use_lum=False)
    with_lum = train_and_score(tr, te, sizes, cfg, use_lum=True)
    report = {
        "train_start": train_start, "train_end": train_end, "test_end": test_end,
        "train_rows": int(train.num_rows), "test_rows": int(test.num_rows),
        "train_with_knowledge": float(tr.dense[:, -1].mean()) if k else 0.0,
        "test_with_knowledge": float(te.dense[:, -1].mean()) if k else 0.0,
        "test_positive_rate": float(te.label.mean()),
        "without_lum": base, "with_lum": with_lum, "lift": with_lum["auc"] - base["auc"],
        # the same AUCs on the test rows whose user and item had knowledge (the rows LUM can change)
        "lift_with_knowledge": with_lum["auc_with_knowledge"] - base["auc_with_knowledge"],
        "config": asdict(cfg), "seconds": 0.0,
    }
    os.makedirs(out_dir, exist_ok=True)
    json_path, png_path = os.path.join(out_dir, "evaluate.json"), os.path.join(out_dir, "evaluate.png")
    write_plot(report, png_path)
    report["seconds"] = round(time.perf_counter() - started, 2)
    with open(json_path, "w") as fh:
        json.dump(report, fh, indent=2, default=str)
    log.info("evaluate: AUC without LUM %.4f, with LUM %.4f, lift %+.4f", base["auc"], with_lum["auc"],
             report["lift"])
    return {"auc_without_lum": round(base["auc"], 5), "auc_with_lum": round(with_lum["auc"], 5),
            "lift": round(report["lift"], 5), "lift_with_knowledge": round(report["lift_with_knowledge"], 5),
            "test_with_knowledge": round(report["test_with_knowledge"], 4), "train_rows": report["train_rows"], "test_rows": report["test_rows"],
            "report": json_path, "plot": png_path, "seconds": report["seconds"]}
