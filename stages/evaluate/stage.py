"""``lum evaluate``: does the LUM knowledge help a ranking model? The reference DLRM, with vs without.

Split (time-based, no shuffling across it): train on ``dlrm_training`` days [train_start, train_end],
test on days (train_end, test_end]. Both runs use the same rows, seed, hyperparameters and sparse
features; the only difference is the LUM dense input (``Config.lum_columns``). Test AUC of each, the
lift (with - without), and the per-epoch curves go to ``<out_dir>/evaluate.json`` and ``evaluate.png``.

``consumer`` picks the ranking model: ``dlrm`` (the reference DLRM, ``stages.evaluate.train``) or ``lr`` (a
logistic regression over train-window user/item positive rates and item popularity, ``stages.evaluate.lr``).
Both AUCs are also reported on the test rows that have knowledge (``lift_with_knowledge``): a sample of
day D has knowledge only if its user behaved before D, which in burst-rated data such as MovieLens is
often not the case, and a row without knowledge is one the LUM input cannot change.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from stages.core.dates import check_ds
from stages.evaluate import lr
from stages.evaluate.features import LUM_COLUMNS, build_features, present_lum_columns, read_tables
from stages.evaluate.plot import write_plot
from stages.evaluate.train import train_and_score
from stages.warehouse.facade import Warehouse

log = logging.getLogger(__name__)

WINDOW_FIELDS = ("train_start", "train_end", "test_end", "out_dir")  # where to read and write, not hyperparameters
CONSUMERS = ("dlrm", "lr")  # Config.consumer


@dataclass(frozen=True)
class Config:
    """The evaluation window and output folder, and the hyperparameters shared by the with- and without-LUM runs."""

    train_start: str = ""  # first train day (YYYY-MM-DD); required, --train-start
    train_end: str = ""  # last train day, inclusive; required, --train-end
    test_end: str = ""  # last test day, inclusive; the test days are (train_end, test_end]; required, --test-end
    out_dir: str = "reports/evaluate"  # folder for evaluate.json and evaluate.png (--out)
    consumer: str = "dlrm"  # the ranking model: "dlrm" (reference DLRM) or "lr" (logistic regression), --consumer
    seed: int = 0  # one seed for both runs: same init of shared modules, same batch order
    epochs: int = 2  # ids overfit within a few epochs; the last epoch is reported (no best-epoch peeking)
    batch_size: int = 1024  # large enough for CPU throughput, small enough for many steps per epoch
    lr: float = 2e-3  # Adam; tiny model, short schedule
    weight_decay: float = 0.0  # regularisation comes from dropout and the short schedule
    emb_dim: int = 16  # per-field embedding width (stages.model.dlrm.DLRMConfig)
    mlp_hidden: tuple[int, ...] = (128, 64)  # top MLP
    dropout: float = 0.1  # top MLP dropout
    history_len: int = 20  # DIN history length; 0 disables the attention
    history_days: int = 365  # DIN history also reads events of this many days before train_start; 0 = none
    lum_columns: tuple[str, ...] = LUM_COLUMNS  # dense LUM inputs of the with-LUM run
    threads: int = 1  # torch intra-op threads; a small model gains little from more and shares the CPU
    l2: float = 3000.0  # lr: L2 penalty on the standardised weights (intercept unpenalised); chosen on validation splits


def _check_window(cfg: Config) -> None:
    if cfg.consumer not in CONSUMERS:
        raise ValueError(f"unknown consumer {cfg.consumer!r}; known: {', '.join(CONSUMERS)}")
    for name in ("train_start", "train_end", "test_end"):
        check_ds(getattr(cfg, name), name=name)
    if not cfg.train_start <= cfg.train_end < cfg.test_end:
        raise ValueError(f"need train_start <= train_end < test_end, got {cfg.train_start}, {cfg.train_end}, "
                         f"{cfg.test_end}")


def run(cfg: Config, *, warehouse: Warehouse | str) -> dict[str, Any]:
    """Train without and with LUM on [train_start, train_end], test on (train_end, test_end].

    Writes ``<out_dir>/evaluate.json`` (the full report) and ``<out_dir>/evaluate.png``; returns the summary.
    ValueError for a bad window, missing rows or labels, or no LUM features in the test days."""
    _check_window(cfg)
    started = time.perf_counter()
    wh = Warehouse.of(warehouse)
    dlrm = cfg.consumer == "dlrm"
    tables = read_tables(wh, train_start=cfg.train_start, train_end=cfg.train_end, test_end=cfg.test_end,
                         history_days=cfg.history_days if cfg.history_len > 0 and dlrm else 0)
    cfg = replace(cfg, lum_columns=present_lum_columns(tuple(cfg.lum_columns), tables.train, tables.test))
    if dlrm:
        tr, te, sizes, k = build_features(tables.train, tables.test, tables.users, tables.items, cfg,
                                          prior=tables.prior)
        has_tr, has_te = (tr.dense[:, -1] > 0, te.dense[:, -1] > 0) if k else (np.zeros(1, bool),) * 2

        def score(use_lum: bool) -> dict[str, Any]:
            return train_and_score(tr, te, sizes, cfg, use_lum=use_lum)
    else:
        data = lr.build(tables.train, tables.test, tuple(cfg.lum_columns))
        has_tr, has_te = data.train_has, data.test_has

        def score(use_lum: bool) -> dict[str, Any]:
            return lr.train_and_score(data, l2=cfg.l2, use_lum=use_lum)
    if cfg.lum_columns and not has_te.any():
        raise ValueError(f"dlrm_training has no LUM features in test days after {cfg.train_end}; run infer and join")
    base, with_lum = score(False), score(True)
    report = {
        "consumer": cfg.consumer, "train_start": cfg.train_start, "train_end": cfg.train_end, "test_end": cfg.test_end,
        "train_rows": int(tables.train.num_rows), "test_rows": int(tables.test.num_rows),
        "train_with_knowledge": float(has_tr.mean()), "test_with_knowledge": float(has_te.mean()),
        "test_positive_rate": float(np.mean(tables.test.column("label").to_numpy(zero_copy_only=False))),
        "without_lum": base, "with_lum": with_lum, "lift": with_lum["auc"] - base["auc"],
        # the same AUCs on the test rows whose user and item had knowledge (the rows LUM can change)
        "lift_with_knowledge": with_lum["auc_with_knowledge"] - base["auc_with_knowledge"],
        "config": {name: v for name, v in asdict(cfg).items() if name not in WINDOW_FIELDS}, "seconds": 0.0,
    }
    os.makedirs(cfg.out_dir, exist_ok=True)
    json_path, png_path = os.path.join(cfg.out_dir, "evaluate.json"), os.path.join(cfg.out_dir, "evaluate.png")
    write_plot(report, png_path)
    report["seconds"] = round(time.perf_counter() - started, 2)
    with open(json_path, "w") as fh:
        json.dump(report, fh, indent=2, default=str)
    log.info("evaluate: AUC without LUM %.4f, with LUM %.4f, lift %+.4f", base["auc"], with_lum["auc"],
             report["lift"])
    return {"consumer": cfg.consumer, "auc_without_lum": round(base["auc"], 5), "auc_with_lum": round(with_lum["auc"], 5),
            "lift": round(report["lift"], 5), "lift_with_knowledge": round(report["lift_with_knowledge"], 5),
            "test_with_knowledge": round(report["test_with_knowledge"], 4),
            "train_rows": report["train_rows"], "test_rows": report["test_rows"],
            "report": json_path, "plot": png_path, "seconds": report["seconds"]}
