"""The LUM's shape: ``ModelConfig`` (stored with every model version; re-exported by stages.model.lum).

``knowledge_dim`` is the width of the knowledge tables' embeddings: d_model, plus the popularity buckets
(and the age buckets with ``item_age``) when the model has time features (stages.model.timefeat).
"""

from __future__ import annotations

from dataclasses import dataclass

from stages.model.timefeat import drift_width


@dataclass(frozen=True)
class ModelConfig:
    d_model: int = 64            # width; SASRec's ML-1M setup uses 50, and small widths train fast on CPUs
    n_heads: int = 2             # d_model must divide by it; 2 heads of 32 as in SASRec's ML-1M setup
    n_layers: int = 2            # SASRec/HSTU ML-1M baselines use 2 blocks
    d_ff: int = 256              # MLP hidden width (4 x d_model, GPT convention)
    dropout: float = 0.0         # SASRec uses 0.2 over hundreds of epochs; short runs are under-fitted (README)
    max_len: int = 200           # behaviours per training sequence (400 tokens); queries read history_len
    d_item: int = 64             # item id embedding width before the Token Encoder projection
    d_feature: int = 16          # width of each categorical feature embedding (category, scenario)
    temperature: float = 0.05    # initial/fixed temperature of the cosine logits (HSTU uses 0.05)
    learn_temperature: bool = True  # learn 1/temperature (clamped to <= 100) instead of fixing it
    cond_loss_weight: float = 1.0   # > 0: next-condition head (item token i_{l-1} -> c_l) trained with this
                                    # weight next to InfoNCE; it gives the eval's p(category | history).
                                    # 0: no head (old models; the eval falls back to the frequency prior)
    time_features: bool = True   # gap-before-behaviour embeddings on condition tokens, and a learned per-query
                                 # weight of each item's recent-popularity bucket (stages.model.timefeat);
                                 # chosen on the validation day (README, "Knowledge on the days it is used")
    popularity_days: int = 30    # the recent-popularity window of time_features, in days before the query day
    item_age: bool = False       # with time_features: also a learned per-query weight of each item's age bucket
                                 # (days since its first event); reads every earlier events partition's item_id
                                 # at pretrain and infer. Measured on the validation day: README

    def check(self) -> None:
        if self.d_model <= 0 or self.n_heads <= 0 or self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} must be a positive multiple of n_heads {self.n_heads}")
        for name in ("n_layers", "d_ff", "max_len", "d_item", "d_feature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.cond_loss_weight < 0:
            raise ValueError(f"cond_loss_weight must be >= 0, got {self.cond_loss_weight}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.popularity_days < 1:
            raise ValueError(f"popularity_days must be >= 1, got {self.popularity_days}")
        if self.item_age and not self.time_features:
            raise ValueError("item_age = true needs time_features = true (the age weights share its drift head)")

    @property
    def knowledge_dim(self) -> int:
        """Width of the knowledge tables' embeddings: d_model, plus the drift width with time_features (the
        query's bucket weights x T in user_knowledge, the item's multi-hot buckets in item_knowledge)."""
        return self.d_model + self.drift_width

    @property
    def drift_width(self) -> int:
        """Outputs of the drift head: POP_BUCKETS (+ AGE_BUCKETS with item_age); 0 without time_features."""
        return drift_width(self.item_age) if self.time_features else 0

    @property
    def history_len(self) -> int:
        """Most behaviours a query reads (encode_grouped): max_len - 1. A training sequence of max_len behaviours
        predicts its last item from the max_len - 1 before it, so its condition tokens sit on positions
        0, 2, ..., 2 * max_len - 2 and its last trained item token on 2 * max_len - 3. A history of max_len
        would put the last item token (2 * max_len - 1) and the query (2 * max_len) on position embeddings that
        training never updates (the README's ML-1M table shows what this cut is worth)."""
        return self.max_len - 1
