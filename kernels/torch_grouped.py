"""Efficient pure-PyTorch grouped-query attention: the CPU inference path and the CPU training path.

Each sequence's prefix (history) is attended once, causally; its condition tokens then attend to that
prefix plus themselves. Vectorised over the batch: sequences are grouped into buckets of similar
(prefix, conditions) size (each rounded up to 4 steps per octave, see ``_bucket``). Per bucket, q, k
and v are padded ONCE each, per sequence as [prefix (P_max rows) | conditions (N_max rows)], by one
``index_select`` of the token-major (T, heads*D) row view with a precomputed token index (2 ms vs 36 ms
for advanced indexing of a transposed view at 64 x 4 x 264 x 64, fp32, 1 thread, measured). Two SDPA
calls use views of it:
  * prefix part: ``is_causal=True`` on the first P_max rows (padding sits after every real row, so the
    causal mask alone is exact; no mask tensor, the fused kernel is used);
  * condition part: the last N_max query rows against all P_max + N_max keys with a boolean mask
    (N_max, P_max+N_max): valid prefix columns or the diagonal. Extra work is N/(P+N) (3% at P=512,
    N=16); the prefix k/v are not gathered a second time.
Outputs go back with one ``index_select`` + ``index_copy_`` per part. Every index tensor and mask (the
"layout") depends only on (cu_seqlens, prefix_lens, device); it is cached (LRU, 8 entries) on the host
values, so the layers of one model forward build it once. No ``.contiguous()`` copies of q/k/v (they
are contiguous already) and no GQA repeat (SDPA's ``enable_gqa``).

Padding positions read the sequence's own last token (masked out by causality or the mask, never another
sequence's data), so a NaN in one sequence cannot reach another through 0 * NaN. Fully differentiable
(autograd through index_select/SDPA/index_copy). Bucketing bounds the padding at < 25% extra rows per
bucket even with one very long sequence among short ones; the number of SDPA calls is at most
2 x (#distinct prefix buckets x #distinct condition buckets), each at most ~4 x log2(max_len).
"""

from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LAYOUT_CACHE_SIZE = 8  # distinct (cu_seqlens, prefix_lens, device) layouts kept; one forward needs one


def _bucket(n: int) -> int:
    """``n`` rounded up to 4 steps per octave (exact up to 8; 9..16 -> 10, 12, 14, 16; 129..256 -> 160,
    192, 224, 256): padding adds < 25% rows, so < 1.56x attention work (power-of-two buckets allowed 2x
    rows, 4x work, and padded most of a [128, 256] batch to 256: SDPA cost 1.75x the real work)."""
    step = 1 << max((n - 1).bit_length() - 3, 0)
    return -(-n // step) * step


@dataclass(frozen=True)
class _Bucket:
    """Index tensors of one bucket of nb sequences padded to S = p_max + n_max rows."""

    nb: int  # sequences in the bucket
    p_max: int  # padded prefix rows (0: no prefix SDPA)
    n_max: int  # padded condition rows (0: no condition SDPA)
    rows: torch.Tensor  # (nb*S,) int64 token ids: per sequence [prefix | conditions], padding = last token
    mask: torch.Tensor | None  # (nb, 1, n_max, S) bool: valid prefix columns or the diagonal
    p_src: torch.Tensor  # rows of the (nb*p_max, H*D) prefix output that are real tokens
    p_dst: torch.Tensor  # their token ids
    n_src: torch.Tensor  # rows of the (nb*n_max, H*D) condition output that are real tokens
    n_dst: torch.Tensor  # their token ids


@functools.lru_cache(maxsize=LAYOUT_CACHE_SIZE)
def _layout(offsets: tuple[int, ...], prefixes: tuple[int, ...], device: torch.device) -> tuple[_Bucket, ...]:
    """All index tensors for one batch (built once per distinct batch, reused by every layer)."""
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    for b, prefix in enumerate(prefixes):
        n_cond = offsets[b + 1] - offsets[b] - prefix
        if prefix + n_cond > 0:
            buckets[(_bucket(prefix), _bucket(n_cond))].append(b)
    out = []
    # normal tensors even under inference_mode: index_select saves its index for backward, and an
    # inference tensor cannot be saved, so a layout cached during inference must still serve training
    with torch.inference_mode(False), torch.no_grad():
        for seqs in buckets.values():
            starts = torch.tensor([offsets[b] for b in seqs], dtype=torch.int64)[:, None]
            pref = torch.tensor([prefixes[b] for b in seqs], dtype=torch.int64)[:, None]
            lengths = torch.tensor([offsets[b + 1] - offsets[b] for b in seqs], dtype=torch.int64)[:, None]
            conds, last = lengths - pref, lengths - 1  # padding reads the sequence's own last token
            p_max = max(prefixes[b] for b in seqs)
            n_max = max(offsets[b + 1] - offsets[b] - prefixes[b] for b in seqs)
            ar_p, ar_n = torch.arange(p_max)[None, :], torch.arange(n_max)[None, :]
            tok_p, tok_n = starts + torch.minimum(ar_p, last), starts + torch.minimum(pref + ar_n, last)
            p_valid, n_valid = ar_p < pref, ar_n < conds  # (nb, p_max), (nb, n_max)
            mask = None
            if n_max > 0:
                mask = torch.cat([p_valid[:, None, :].expand(-1, n_max, -1),
                                  torch.eye(n_max, dtype=torch.bool).expand(len(seqs), -1, -1)], dim=2)[:, None]
            p_src, n_src = torch.nonzero(p_valid.flatten()).flatten(), torch.nonzero(n_valid.flatten()).flatten()
            tensors = (torch.cat([tok_p, tok_n], 1).flatten(), mask, p_src, tok_p.flatten()[p_src], n_src,
                       tok_n.flatten()[n_src])
            out.append(_Bucket(len(seqs), p_max, n_max, *(None if x is None else x.to(device) for x in tensors)))
    return tuple(out)


def torch_grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                            prefix_lens: torch.Tensor, *, scale: float | None = None,
                            offsets: list[int] | None = None,
                            prefixes: list[int] | None = None) -> torch.Tensor:
    """Grouped-query attention. q: (T, H, D); k, v: (T, H_kv, D); cu_seqlens (B+1,), prefix_lens (B,).
    ``offsets``/``prefixes``: host copies of cu_seqlens/prefix_lens when the caller has them (saves a
    device sync). Returns (T, H, D) in q.dtype. Inputs are assumed valid (the dispatcher checks);
    non-contiguous inputs are copied once."""
    t, h, d = q.shape
    h_kv = k.shape[1]
    scale = d ** -0.5 if scale is None else float(scale)
    offsets = [int(x) for x in cu_seqlens.tolist()] if offsets is None else offsets
    prefixes = [int(x) for x in prefix_lens.tolist()] if prefixes is None else prefixes
    if t == 0:
        return q.new_zeros((0, h, d))
    layout = _layout(tuple(offsets), tuple(prefixes), q.device)
    # token-major (T, heads*D) row views: one index_select per tensor pads a whole bucket (rows of
    # heads*D contiguous values); SDPA takes the transposed (nb, heads, S, D) views as they are (CPU
    # flash attention ran as fast on them as on head-major copies, measured at 64 x 4 x 264 x 64)
    q2, k2, v2 = (x.contiguous().view(t, -1) for x in (q, k, v))
    out = q.new_empty((t, h * d))  # every row is written: each token lies in exactly one bucket
    gqa = h != h_kv
    for bk in layout:
        s = bk.p_max + bk.n_max
        qp = q2.index_select(0, bk.rows).view(bk.nb, s, h, d).transpose(1, 2)
        kp, vp = (x.index_select(0, bk.rows).view(bk.nb, s, h_kv, d).transpose(1, 2) for x in (k2, v2))
        if bk.p_max > 0:
            op = F.scaled_dot_product_attention(qp[:, :, :bk.p_max], kp[:, :, :bk.p_max], vp[:, :, :bk.p_max],
                                                is_causal=True, scale=scale, enable_gqa=gqa)
            out.index_copy_(0, bk.p_dst, op.transpose(1, 2).reshape(-1, h * d).index_select(0, bk.p_src))
        if bk.n_max > 0:
            on = F.scaled_dot_product_attention(qp[:, :, bk.p_max:], kp, vp, attn_mask=bk.mask, scale=scale,
                                                enable_gqa=gqa)
            out.index_copy_(0, bk.n_dst, on.transpose(1, 2).reshape(-1, h * d).index_select(0, bk.n_src))
    return out.view(t, h, d)
