"""The reference DLRM of ``lum evaluate``: embeddings + MLP, DIN attention over the recent history, and the
LUM columns as extra dense inputs.

A batch of B samples (``stages.evaluate.features``): ``sparse`` int64 (B, F), one row index per categorical
field, 0 = unknown (every field's table has that row); ``history`` int64 (B, H), item-field rows of the user's
last H items strictly before the sample's ts, oldest first, left-padded with 0 (masked out); ``dense`` float32
(B, K) LUM features, K = 0 for the baseline. Output: logits (B,) of the label.
DIN attention (Zhou et al. 2018) scores each history item h against the target t from [h, t, h - t, h * t]
and pools by the masked softmax (all-padding rows pool to zeros). Embeddings and attention are built first, so
two models made under one seed start from the same embedding and attention weights; only the top MLP's first
layer, whose width depends on K, differs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DLRMConfig:
    """Hyperparameters of the reference model (identical for the with/without-LUM runs)."""

    emb_dim: int = 16  # per-field embedding width; MovieLens-scale vocabularies need no more
    mlp_hidden: tuple[int, ...] = (128, 64)  # the top MLP; two layers are the usual DLRM/DIN size
    attn_hidden: int = 32  # hidden width of the DIN scoring MLP
    dense_hidden: int = 32  # LUM dense inputs are projected to this width before the top MLP
    dropout: float = 0.1  # light regularisation; id embeddings overfit within a few epochs


class DINAttention(nn.Module):
    """Target-aware pooling of the history: (B, H, E) x (B, E) -> (B, E)."""

    def __init__(self, emb_dim: int, hidden: int) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(4 * emb_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, hist: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        t = target.unsqueeze(1).expand_as(hist)
        logits = self.score(torch.cat([hist, t, hist - t, hist * t], dim=-1)).squeeze(-1)  # (B, H)
        logits = logits.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(logits, dim=-1)
        weights = torch.nan_to_num(weights, nan=0.0)  # rows with an empty history: all -inf -> nan -> 0
        return torch.einsum("bh,bhe->be", weights, hist)


class DLRM(nn.Module):
    """Embeddings + DIN history pooling + optional dense (LUM) inputs -> MLP -> logit."""

    def __init__(self, cfg: DLRMConfig, vocab_sizes: list[int], *, item_field: int, dense_dim: int = 0,
                 use_history: bool = True) -> None:
        super().__init__()
        if not vocab_sizes or min(vocab_sizes) < 1:
            raise ValueError(f"vocab_sizes must be positive, got {vocab_sizes}")
        if not 0 <= item_field < len(vocab_sizes):
            raise ValueError(f"item_field {item_field} out of range for {len(vocab_sizes)} fields")
        if dense_dim < 0:
            raise ValueError(f"dense_dim must be >= 0, got {dense_dim}")
        self.item_field = item_field
        self.use_history = use_history
        self.dense_dim = dense_dim
        # Embeddings and attention first: same init under the same seed whatever dense_dim is.
        self.embeddings = nn.ModuleList(nn.Embedding(n, cfg.emb_dim) for n in vocab_sizes)
        for emb in self.embeddings:
            nn.init.normal_(emb.weight, std=0.05)
        self.attention = DINAttention(cfg.emb_dim, cfg.attn_hidden) if use_history else None
        width = cfg.emb_dim * (len(vocab_sizes) + int(use_history))
        layers: list[nn.Module] = []
        top_in = width + (cfg.dense_hidden if dense_dim else 0)
        for h in cfg.mlp_hidden:
            layers += [nn.Linear(top_in, h), nn.ReLU(), nn.Dropout(cfg.dropout)]
            top_in = h
        layers.append(nn.Linear(top_in, 1))
        self.mlp = nn.Sequential(*layers)
        # Dense (LUM) path last. BatchNorm per feature: LUM vectors come at whatever scale the model has.
        self.dense = (nn.Sequential(nn.BatchNorm1d(dense_dim), nn.Linear(dense_dim, cfg.dense_hidden), nn.ReLU())
                      if dense_dim else None)

    def forward(self, sparse: torch.Tensor, history: torch.Tensor | None = None,
                dense: torch.Tensor | None = None) -> torch.Tensor:
        if sparse.dim() != 2 or sparse.shape[1] != len(self.embeddings):
            raise ValueError(f"sparse must be (B, {len(self.embeddings)}), got {tuple(sparse.shape)}")
        parts = [emb(sparse[:, f]) for f, emb in enumerate(self.embeddings)]
        if self.attention is not None:
            if history is None:
                raise ValueError("history is required when use_history=True")
            item_emb = self.embeddings[self.item_field]
            pooled = self.attention(item_emb(history), parts[self.item_field], history > 0)
            parts.append(pooled)
        if self.dense is not None:
            if dense is None or dense.shape != (sparse.shape[0], self.dense_dim):
                got = None if dense is None else tuple(dense.shape)
                raise ValueError(f"dense must be ({sparse.shape[0]}, {self.dense_dim}), got {got}")
            parts.append(self.dense(dense))
        return self.mlp(torch.cat(parts, dim=-1)).squeeze(-1)
