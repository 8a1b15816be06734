"""The Large User Model: Token Encoder + causal pre-norm Transformer User Encoder (LUM step 1).

References: LUM (Yan et al. 2025, "Unlocking Scaling Law in Industrial Recommendation Systems with a
Three-step Paradigm based Large User Model"); nanoGPT's model.py for the block layout.
Tokens ``[c1, i1, ..., cL, iL]`` (stages.model.vocab); learned positions restart at 0 per sequence. An item token
embeds its id and category, a condition token one embedding per feature; both project to d_model.
Outputs ``o`` (at condition tokens) and item embeddings ``e`` are L2-normalised: the logit is
``logit_scale * <o, e>``. The optional next-condition head (cond_loss_weight > 0) reads the state at item token
i_{l-1} and predicts c_l, tied to the feature embeddings: log p(condition | history).
Attention goes through ``kernels`` only: packed causal attention in training, grouped queries at inference.
time_features: a gap embedding on every condition token and a per-query logit bonus per candidate popularity
bucket, and per age bucket with item_age (``popularity_weights``; stages.model.timefeat).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kernels import plan_causal_attention, plan_grouped_attention
from stages.model.config import ModelConfig
from stages.model.timefeat import GAP_BUCKETS, gap_bucket_of, gap_buckets
from stages.model.vocab import interleave

TRAINING_BACKENDS = ("auto", "sdpa_mask", "kernel", "varlen")  # LUM.attention_backend values
__all__ = ["LUM", "TRAINING_BACKENDS", "ModelConfig", "build_model"]


class Block(nn.Module):
    """Pre-norm Transformer block over a packed token stream."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_ff), nn.GELU(), nn.Linear(cfg.d_ff, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, attend) -> torch.Tensor:
        T, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(T, 3, self.n_heads, D // self.n_heads).unbind(1)
        a = attend(q, k, v).reshape(T, D)
        x = x + self.drop(self.proj(a))
        return x + self.drop(self.mlp(self.ln2(x)))


class LUM(nn.Module):
    """Token Encoder + User Encoder. Sizes come from the vocabulary (stages.model.vocab.Vocab)."""

    def __init__(self, cfg: ModelConfig, *, n_item_rows: int, item_category: torch.Tensor,
                 cond_features: torch.Tensor, feature_sizes: list[int], n_categories: int) -> None:
        super().__init__()
        cfg.check()
        self.cfg = cfg
        self.register_buffer("item_category", item_category.to(torch.long).clone(), persistent=True)
        self.register_buffer("cond_features", cond_features.to(torch.long).clone(), persistent=True)
        self.item_id_emb = nn.Embedding(n_item_rows, cfg.d_item)
        self.item_cat_emb = nn.Embedding(max(1, n_categories), cfg.d_feature)
        self.item_proj = nn.Linear(cfg.d_item + cfg.d_feature, cfg.d_model)
        self.cond_embs = nn.ModuleList(nn.Embedding(n, cfg.d_feature) for n in feature_sizes)
        self.cond_proj = nn.Linear(cfg.d_feature * len(feature_sizes), cfg.d_model)
        self.pos_emb = nn.Embedding(2 * cfg.max_len + 1, cfg.d_model)
        self.emb_drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.d_model)
        # next-condition head, one small projection per condition feature, tied to that feature's
        # embedding table: logits_k = W_k h @ cond_embs[k].weight.T. Tying keeps the parameter shapes
        # independent of the vocabulary (daily warm starts remap cond_embs rows by value).
        self.cond_heads = (nn.ModuleList(nn.Linear(cfg.d_model, cfg.d_feature) for _ in feature_sizes)
                           if cfg.cond_loss_weight > 0 else None)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.temperature)),
                                      requires_grad=cfg.learn_temperature)
        self.attention_backend = "auto"   # training attention, one of TRAINING_BACKENDS
        # time: the gap before each behaviour on its condition token; pop_head turns a query's state into a
        # logit bonus per popularity bucket of the candidate (zero at init: the plain model)
        self.gap_emb = nn.Embedding(GAP_BUCKETS, cfg.d_model) if cfg.time_features else None
        self.pop_head = nn.Linear(cfg.d_model, cfg.drift_width) if cfg.time_features else None
        self.apply(self._init)
        if self.pop_head is not None:
            nn.init.zeros_(self.pop_head.weight)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.log_scale.clamp(max=math.log(100.0)).exp()

    # ---- Token Encoder ------------------------------------------------------------------------
    def _item_tokens(self, rows: torch.Tensor) -> torch.Tensor:
        feats = torch.cat([self.item_id_emb(rows), self.item_cat_emb(self.item_category[rows])], dim=-1)
        return self.item_proj(feats)

    def _cond_tokens(self, cond_ids: torch.Tensor, gaps: torch.Tensor | None = None) -> torch.Tensor:
        f = self.cond_features[cond_ids]
        feats = torch.cat([emb(f[:, k]) for k, emb in enumerate(self.cond_embs)], dim=-1)
        x = self.cond_proj(feats)
        if self.gap_emb is not None:  # no timestamps: bucket 0, "no previous behaviour"
            x = x + self.gap_emb(gaps if gaps is not None else torch.zeros_like(cond_ids))
        return x

    def popularity_weights(self, h: torch.Tensor) -> torch.Tensor:
        """(P, cfg.drift_width) logit bonus of each candidate bucket (popularity, then age with item_age) for
        query states h (P, d_model)."""
        if self.pop_head is None:
            raise ValueError("popularity_weights: model has no time features (time_features = false)")
        return self.pop_head(h).float()

    def item_embeddings(self, item_rows: torch.Tensor | None = None) -> torch.Tensor:
        """e_i: (n, d_model) unit-norm embeddings of ``item_rows`` (all rows, OOV row 0 included, if None)."""
        if item_rows is None:
            item_rows = torch.arange(self.item_id_emb.num_embeddings, device=self.item_id_emb.weight.device)
        return F.normalize(self._item_tokens(item_rows), dim=-1)

    # ---- User Encoder -------------------------------------------------------------------------
    def _hidden(self, x: torch.Tensor, attend) -> torch.Tensor:
        x = self.emb_drop(x)
        for block in self.blocks:
            x = block(x, attend)
        return self.ln_f(x)

    @property
    def has_cond_head(self) -> bool:
        return self.cond_heads is not None

    def cond_logits(self, h: torch.Tensor) -> list[torch.Tensor]:
        """Next-condition logits from item-token hidden states h (P, d_model): one (P, n_values_k) tensor per
        condition feature k (value indices of stages.model.vocab.Vocab.cond_features)."""
        if self.cond_heads is None:
            raise ValueError("cond_logits: model has no next-condition head (cond_loss_weight = 0)")
        return [head(h) @ emb.weight.t().to(h.dtype) for head, emb in zip(self.cond_heads, self.cond_embs)]

    def condition_log_probs(self, h: torch.Tensor) -> torch.Tensor:
        """(P, n_conditions) log p(c | history) from hidden states h (P, d_model): the features are predicted
        independently, log p(c) = sum_k log p(f_k(c)); not renormalised over the condition ids."""
        f = self.cond_features                                                 # (n_conditions, K)
        out = h.new_zeros(h.shape[0], f.shape[0], dtype=torch.float32)
        for k, logits in enumerate(self.cond_logits(h)):
            out = out + torch.log_softmax(logits.float(), dim=-1)[:, f[:, k]]
        return out

    def _training_attend(self, cu_tok: torch.Tensor, row_of_seq: torch.Tensor | None,
                         row_tokens: int | None):
        """The attend(q, k, v) of one training batch (kernels.plan_causal_attention)."""
        backend = self.attention_backend
        if backend not in TRAINING_BACKENDS:
            raise ValueError(f"attention_backend must be {'|'.join(TRAINING_BACKENDS)}, got {backend!r}")
        if backend == "kernel":
            backend = "triton" if cu_tok.is_cuda else "torch"
        return plan_causal_attention(cu_tok, backend=backend, row_of_seq=row_of_seq, row_tokens=row_tokens)

    def encode_packed(self, items: torch.Tensor, conds: torch.Tensor, cu_seqlens: torch.Tensor,
                      row_of_seq: torch.Tensor | None = None, row_tokens: int | None = None,
                      with_item_hidden: bool = False, ts: torch.Tensor | None = None,
                      with_popularity: bool = False):
        """Training forward. items/conds (N,) behaviours of B packed sequences, cu_seqlens (B+1,) behaviour
        offsets, row_of_seq (B,) packed row per sequence (None: one row each; used by "sdpa_mask" only).
        Returns (N, d_model) unit outputs at the condition tokens: row n predicts items[n].
        with_item_hidden: also return the (N, d_model) final-LN hidden states at the item tokens (row n is
        the state after i_n; the next-condition head turns it into a prediction of conds[n + 1]).
        ts: (N,) int64 epoch seconds of the behaviours (time_features: the gap buckets; None = bucket 0).
        with_popularity: also return (N, cfg.drift_width) drift weights of the condition positions.
        Returns o, then item states if asked, then popularity weights if asked (a tuple when anything is asked)."""
        cu = cu_seqlens.to(torch.long)
        n_beh = cu[1:] - cu[:-1]
        if n_beh.numel() and int(n_beh.max()) > self.cfg.max_len:
            raise ValueError(f"a sequence has {int(n_beh.max())} behaviours > max_len {self.cfg.max_len}")
        cu_tok = (2 * cu).to(torch.int32)
        T = 2 * items.shape[0]
        seq = torch.repeat_interleave(torch.arange(n_beh.numel(), device=items.device), 2 * n_beh, output_size=T)
        pos = torch.arange(T, device=items.device) - 2 * cu[:-1][seq]
        gaps = gap_buckets(ts, cu) if (ts is not None and self.gap_emb is not None) else None
        x = interleave(self._cond_tokens(conds, gaps), self._item_tokens(items)) + self.pos_emb(pos)
        attend = self._training_attend(cu_tok, row_of_seq, row_tokens)
        h = self._hidden(x, attend)
        out = F.normalize(self.head(h[0::2]), dim=-1)
        extra = ([h[1::2]] if with_item_hidden else []) + ([self.popularity_weights(h[0::2])] if with_popularity else [])
        return (out, *extra) if extra else out

    def forward(self, items, conds, cu_seqlens, row_of_seq=None, row_tokens=None,
                with_item_hidden=False, ts=None, with_popularity=False):  # DDP calls forward
        return self.encode_packed(items, conds, cu_seqlens, row_of_seq, row_tokens, with_item_hidden, ts,
                                  with_popularity)

    def encode_grouped(self, hist_item_rows: torch.Tensor, hist_cond_ids: torch.Tensor,
                       cu_seqlens_hist: torch.Tensor, query_cond_ids: torch.Tensor,
                       cu_queries: torch.Tensor, *, backend: str = "auto", with_next_cond: bool = False,
                       hist_ts: torch.Tensor | None = None, query_ts: torch.Tensor | None = None,
                       with_popularity: bool = False):
        """Query N_b conditions per user against its history, the history encoded once.

        hist_item_rows/hist_cond_ids: (sum L_b,) behaviours, oldest first; cu_seqlens_hist: (B+1,) int32
        behaviour offsets; query_cond_ids: (sum N_b,); cu_queries: (B+1,) int32. Layout per user:
        [c1, i1, ..., cL, iL, q1, ..., qN] with prefix 2L; every query sits at position 2L (the next
        condition slot) and attends to the history and itself (kernels.plan_grouped_attention: the batch is
        checked and tiled once for every layer). Histories longer than history_len (max_len - 1) keep their
        last history_len behaviours; an empty history is allowed (queries see only themselves). Returns
        (sum N_b, d_model) unit-norm o_q.
        ``backend`` is passed to the kernel ("auto": triton on CUDA, torch reference elsewhere).
        with_next_cond: also return (B, n_conditions) log p(next condition | history) from the hidden state
        at each user's last item token (`condition_log_probs`); zeros (uniform) for an empty history.
        Needs the next-condition head (raises ValueError without it).
        hist_ts (sum L_b,) int64 epoch seconds and query_ts (B,) the query time (time_features: gap buckets; the
        queries' gap is query_ts - the last behaviour's ts). with_popularity: also return (sum N_b, cfg.drift_width)
        drift weights. Returns o, then log p if asked, then popularity weights if asked.
        """
        dev = hist_item_rows.device
        cu_h = cu_seqlens_hist.to(device=dev, dtype=torch.long)
        cu_q = cu_queries.to(device=dev, dtype=torch.long)
        if cu_h.numel() != cu_q.numel():
            raise ValueError(f"cu_seqlens_hist has {cu_h.numel()} entries, cu_queries {cu_q.numel()}")
        L = cu_h[1:] - cu_h[:-1]
        keep = L.clamp(max=self.cfg.history_len)
        if bool((keep < L).any()):  # cut to the last history_len behaviours per user
            B = L.numel()
            user = torch.repeat_interleave(torch.arange(B, device=dev), L)
            local = torch.arange(hist_item_rows.numel(), device=dev) - cu_h[:-1][user]
            mask = local >= (L - keep)[user]
            hist_item_rows, hist_cond_ids = hist_item_rows[mask], hist_cond_ids[mask]
            hist_ts = hist_ts[mask] if hist_ts is not None else None
            L = keep
            cu_h = torch.cat([cu_h.new_zeros(1), torch.cumsum(L, 0)])
        N = cu_q[1:] - cu_q[:-1]
        B = L.numel()
        seg = 2 * L + N
        cu_tok = torch.cat([seg.new_zeros(1), torch.cumsum(seg, 0)])
        T = int(cu_tok[-1])
        # history token slots
        user_h = torch.repeat_interleave(torch.arange(B, device=dev), L)
        local_h = torch.arange(hist_item_rows.numel(), device=dev) - cu_h[:-1][user_h]
        c_slot = cu_tok[:-1][user_h] + 2 * local_h
        user_q = torch.repeat_interleave(torch.arange(B, device=dev), N)
        local_q = torch.arange(query_cond_ids.numel(), device=dev) - cu_q[:-1][user_q]
        q_slot = cu_tok[:-1][user_q] + 2 * L[user_q] + local_q
        D = self.cfg.d_model
        x = torch.zeros(T, D, device=dev, dtype=self.pos_emb.weight.dtype)
        pos = torch.zeros(T, dtype=torch.long, device=dev)
        gaps = q_gaps = None
        if self.gap_emb is not None and hist_ts is not None:
            gaps = gap_buckets(hist_ts, cu_h)
            if query_ts is not None:
                last = hist_ts[(cu_h[1:] - 1).clamp(min=0)] if hist_ts.numel() else query_ts.new_zeros(B)
                q_gap = torch.where(L > 0, gap_bucket_of(query_ts.to(dev) - last), torch.zeros_like(L))
                q_gaps = q_gap[user_q]
        x[c_slot] = self._cond_tokens(hist_cond_ids, gaps)
        x[c_slot + 1] = self._item_tokens(hist_item_rows)
        x[q_slot] = self._cond_tokens(query_cond_ids, q_gaps)
        pos[c_slot], pos[c_slot + 1], pos[q_slot] = 2 * local_h, 2 * local_h + 1, 2 * L[user_q]
        x = x + self.pos_emb(pos)
        attend = plan_grouped_attention(cu_tok.to(torch.int32), (2 * L).to(torch.int32), backend=backend)
        h = self._hidden(x, lambda q, k, v: attend(q.contiguous(), k.contiguous(), v.contiguous()))
        out = F.normalize(self.head(h[q_slot]), dim=-1)
        extra = []
        if with_next_cond:
            if not self.has_cond_head:
                raise ValueError("encode_grouped(with_next_cond=True): model has no next-condition head")
            log_p = torch.zeros(B, self.cond_features.shape[0], device=dev)
            has = L > 0
            if bool(has.any()):
                last_item = cu_tok[:-1][has] + 2 * L[has] - 1
                log_p[has] = self.condition_log_probs(h[last_item])
            extra.append(log_p)
        if with_popularity:
            extra.append(self.popularity_weights(h[q_slot]))
        return (out, *extra) if extra else out


def build_model(cfg: ModelConfig, vocab) -> LUM:
    """A fresh LUM sized for ``vocab`` (stages.model.vocab.Vocab)."""
    return LUM(cfg, n_item_rows=vocab.n_item_rows, item_category=torch.from_numpy(vocab.item_category),
               cond_features=torch.from_numpy(vocab.cond_features()),
               feature_sizes=[len(vocab.feature_values[f]) for f in vocab.features],
               n_categories=vocab.n_categories)
