"""The consumer training loop of ``lum evaluate``: the reference DLRM trained on one split, scored on the other.

Reproducible by construction: one seed fixes the shared modules' init and the batch order, so the with- and
without-LUM runs differ only in the dense input. The test AUC of the last epoch is the result (no
best-epoch picking on the test rows).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

import numpy as np
import torch

from stages.evaluate.features import ITEM_FIELD, Features
from stages.evaluate.metrics import auc
from stages.model.dlrm import DLRM, DLRMConfig

log = logging.getLogger(__name__)


class TrainOptions(Protocol):
    """The options ``train_and_score`` reads (``stages.evaluate.stage.Config`` has them)."""

    seed: int
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    emb_dim: int
    mlp_hidden: tuple[int, ...]
    dropout: float
    history_len: int
    threads: int


def train_and_score(train: Features, test: Features, vocab_sizes: list[int], cfg: TrainOptions, *,
                    use_lum: bool) -> dict[str, Any]:
    """Train the reference DLRM (seeded) and return test AUC, per-epoch loss and test AUC, timings.

    ``auc_with_knowledge``: the AUC on the test rows whose has-knowledge flag (last dense column) is set."""
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


def _predict(model: DLRM, xs: torch.Tensor, xh: torch.Tensor, xd: torch.Tensor | None, batch: int) -> np.ndarray:
    """Logits of every row, in eval mode, ``batch`` rows at a time."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, xs.shape[0], batch):
            sl = slice(start, start + batch)
            out.append(model(xs[sl], xh[sl], None if xd is None else xd[sl]).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)
