"""Triton forward kernel of jagged grouped-query masked attention (flash-attention style).

Layout: q (T, H, D), k/v (T, H_kv, D), H % H_kv == 0, cu_seqlens (B+1,) int32,
prefix_lens (B,) int32. Sequence b = [history tokens 0..P-1 | N condition tokens P..L-1].

One program runs BLOCK_M rows of one tile of the host's tile tables (kernels.tiles) for one head; history
and condition tiles are two launches of the same kernel (constexpr QUERY):
  * history tiles (128 rows, BLOCK_M dividing it) cover rows [0, P): causal. Key blocks [0, m_start) are
    fully visible and run without any per-element mask; only the diagonal blocks [m_start, m_start + BLOCK_M)
    are masked.
  * condition tiles (BLOCK_M = the tile's 16, 32 or 64 rows) cover rows [P, L): each row sees keys [0, P)
    (all full blocks unmasked, at most one partial block masked on n < P) plus itself, added as one extra
    online-softmax term sum(q * k_self) - never a (BLOCK_M x BLOCK_M) diagonal matmul, and never another
    condition's key.
No key block outside a tile's visible range is loaded; nothing outside the tile's own sequence is read.
Grid = (n_tiles * 128 // BLOCK_M, H): axis 0 holds the large dimension (< 2^31 programs: 2^38 tokens),
axis 1 the heads (<= 65535). Offsets are int64 before any multiply by a stride. Accumulation in fp32
(online softmax in base 2); fp32 inputs use IEEE dots (no TF32) so fp32 stays fp32-accurate. D is padded
to the next power of two (BLOCK_D) with masks, so 48 or 80 work.

Autotuning: history tiles BLOCK_M in {64, 128}, BLOCK_N in {32, 64, 128}, warps, stages (``prune_configs``);
condition tiles BLOCK_N, warps, stages (``prune_condition_configs``); both keyed on the previous power of
two of max length and max prefix (new lengths do not re-tune). Under TRITON_INTERPRET=1 a single fixed small
config is used per launch (the interpreter runs programs serially).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kernels.tiles import TILE, TileTable, prev_pow2

LOG2E = 1.4426950408889634


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _dot(a, b, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """tl.dot with fp32 accumulation. UPCAST (interpreter + bf16 only): Triton 3.7's interpreter
    multiplies bf16 operands wrongly, so there the operands go to fp32 first."""
    if UPCAST:
        res = tl.dot(a.to(tl.float32), b.to(tl.float32))
    else:
        res = tl.dot(a, b, input_precision=PREC)
    return res


@triton.jit
def _attend(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, offs_m, offs_n, offs_d, lo, hi,
            key_bound, qk_scale, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
            MASKED: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """Online softmax over key blocks [lo, hi). MASKED: bound keys by key_bound (and n <= m if CAUSAL)."""
    d_ok = offs_d < HEAD_DIM
    for start_n in range(lo, hi, BLOCK_N):
        n = start_n + offs_n
        n64 = n.to(tl.int64)
        kt_ptrs = k_base + n64[None, :] * stride_kt + offs_d[:, None]
        v_ptrs = v_base + n64[:, None] * stride_vt + offs_d[None, :]
        if MASKED:
            key_ok = n < key_bound
            kt = tl.load(kt_ptrs, mask=key_ok[None, :] & d_ok[:, None], other=0.0)
            vb = tl.load(v_ptrs, mask=key_ok[:, None] & d_ok[None, :], other=0.0)
        elif HEAD_DIM == BLOCK_D:
            kt = tl.load(kt_ptrs)
            vb = tl.load(v_ptrs)
        else:
            kt = tl.load(kt_ptrs, mask=d_ok[:, None], other=0.0)
            vb = tl.load(v_ptrs, mask=d_ok[None, :], other=0.0)
        qk = _dot(q, kt, PREC, UPCAST) * qk_scale
        if MASKED:
            visible = key_ok[None, :]
            if CAUSAL:
                visible = visible & (n[None, :] <= offs_m[:, None])
            qk = tl.where(visible, qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            m_new = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing visible yet
        else:
            m_new = tl.maximum(m_i, tl.max(qk, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _dot(p.to(vb.dtype), vb, PREC, UPCAST)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, CU, PREFIX, TILES,
                stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
                stride_lh, qk_scale, SEQLEN_BUCKET, PREFIX_BUCKET,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, GROUP: tl.constexpr, TILE_ROWS: tl.constexpr,
                PREC: tl.constexpr, UPCAST: tl.constexpr, STORE_LSE: tl.constexpr, QUERY: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    SUB: tl.constexpr = TILE_ROWS // BLOCK_M
    pid = tl.program_id(0)
    head = tl.program_id(1)
    tile = pid // SUB
    seq = tl.load(TILES + tile * 3)
    m_start = tl.load(TILES + tile * 3 + 1) + (pid % SUB) * BLOCK_M
    seq_start = tl.load(CU + seq)
    seq_len = tl.load(CU + seq + 1) - seq_start
    prefix = tl.load(PREFIX + seq)
    if QUERY:
        row_end = seq_len
    else:
        row_end = prefix
    if m_start >= row_end:  # the unused tail of a 128-row tile
        return
    offs_m = m_start + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < row_end
    io_mask = row_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
    rows64 = seq_start.to(tl.int64) + offs_m.to(tl.int64)
    head64 = head.to(tl.int64)
    kv_head64 = (head // GROUP).to(tl.int64)
    q = tl.load(Q + rows64[:, None] * stride_qt + head64 * stride_qh + offs_d[None, :], mask=io_mask,
                other=0.0)
    k_base = K + seq_start.to(tl.int64) * stride_kt + kv_head64 * stride_kh
    v_base = V + seq_start.to(tl.int64) * stride_vt + kv_head64 * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if not QUERY:
        # history rows: keys before the tile are fully visible, the diagonal blocks are causal
        acc, l_i, m_i = _attend(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, offs_m, offs_n,
                                offs_d, 0, m_start, prefix, qk_scale, HEAD_DIM, BLOCK_D, BLOCK_N,
                                False, False, PREC, UPCAST)
        acc, l_i, m_i = _attend(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, offs_m, offs_n,
                                offs_d, m_start, tl.minimum(m_start + BLOCK_M, prefix), prefix, qk_scale,
                                HEAD_DIM, BLOCK_D, BLOCK_N, True, True, PREC, UPCAST)
    else:
        # condition rows: the whole history (full blocks unmasked, one partial block masked) ...
        full_end = (prefix // BLOCK_N) * BLOCK_N
        acc, l_i, m_i = _attend(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, offs_m, offs_n,
                                offs_d, 0, full_end, prefix, qk_scale, HEAD_DIM, BLOCK_D, BLOCK_N,
                                False, False, PREC, UPCAST)
        acc, l_i, m_i = _attend(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, offs_m, offs_n,
                                offs_d, full_end, prefix, prefix, qk_scale, HEAD_DIM, BLOCK_D, BLOCK_N,
                                True, False, PREC, UPCAST)
        # ... plus itself: one extra online-softmax term per row
        k_self = tl.load(K + rows64[:, None] * stride_kt + kv_head64 * stride_kh + offs_d[None, :],
                         mask=io_mask, other=0.0)
        v_self = tl.load(V + rows64[:, None] * stride_vt + kv_head64 * stride_vh + offs_d[None, :],
                         mask=io_mask, other=0.0)
        s_self = tl.sum(q.to(tl.float32) * k_self.to(tl.float32), 1) * qk_scale
        m_new = tl.maximum(m_i, s_self)
        alpha = tl.exp2(m_i - m_new)
        p_self = tl.exp2(s_self - m_new)
        l_i = l_i * alpha + p_self
        acc = acc * alpha[:, None] + p_self[:, None] * v_self.to(tl.float32)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(O + rows64[:, None] * stride_ot + head64 * stride_oh + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=io_mask)
    if STORE_LSE:
        tl.store(LSE + head64 * stride_lh + rows64, m_i + tl.log2(l_i), mask=row_ok)


def _configs() -> list[triton.Config]:
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
            for bm in (64, 128) for bn in (32, 64, 128) for w in (4, 8) for s in (2, 3)]


def _condition_configs() -> list[triton.Config]:
    """BLOCK_M is the condition tile's rows, passed by the launch; the first config fits every batch."""
    return [triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=s)
            for bn in (32, 64, 128) for w in (2, 4) for s in (2, 3)]


def prune_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """History tiles: drop configs that cannot win: BLOCK_N > BLOCK_M (diagonal split needs
    BLOCK_M % BLOCK_N == 0), BLOCK_M=128 for short sequences (< 128 rows: half-empty tiles), BLOCK_N above
    the bucketed max prefix, and 128x128 tiles at D=128 (register spills)."""
    args = {**named_args, **kwargs}
    seqlen, prefix, block_d = args["SEQLEN_BUCKET"], args["PREFIX_BUCKET"], args["BLOCK_D"]
    kept = []
    for c in configs:
        bm, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
        if bn > bm or bm % bn or TILE % bm:
            continue
        if bm == 128 and seqlen < 128:
            continue
        if bn > max(prefix, 32):
            continue
        if block_d >= 128 and bm * bn >= 128 * 128:
            continue
        kept.append(c)
    return kept or [configs[0]]


def prune_condition_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Condition tiles: drop BLOCK_N above the bucketed max prefix (a short history is one partial block)."""
    prefix = {**named_args, **kwargs}["PREFIX_BUCKET"]
    return [c for c in configs if c.kwargs["BLOCK_N"] <= max(prefix, 32)] or [configs[0]]


KEY = ["SEQLEN_BUCKET", "PREFIX_BUCKET", "HEAD_DIM", "GROUP"]
_fwd_tuned = triton.autotune(configs=_configs(), key=KEY,
                             prune_configs_by={"early_config_prune": prune_configs})(_fwd_kernel)
_cond_tuned = triton.autotune(configs=_condition_configs(), key=[*KEY, "BLOCK_M"],
                              prune_configs_by={"early_config_prune": prune_condition_configs})(_fwd_kernel)
# A single small config per launch under the interpreter: history tiles exercise multi-block loops and 2
# sub-tiles per tile, condition tiles multi-block loops.
INTERPRET_CONFIG = {"BLOCK_M": 64, "BLOCK_N": 32}
INTERPRET_CONDITION_BLOCK_N = 32


def _forward(q, k, v, cu_seqlens, prefix_lens, tiles: TileTable, scale, *, max_len, max_prefix, store_lse,
             out=None):
    """Both launches (history tiles, then condition tiles) into ``out``; returns (out, lse or out)."""
    t, h, d = q.shape
    out = torch.empty_like(q) if out is None else out
    lse = torch.empty((h, t), dtype=torch.float32, device=q.device) if store_lse else out
    if t == 0:
        return out, lse
    common = (q, k, v, out, lse, cu_seqlens, prefix_lens)
    rest = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            out.stride(0), out.stride(1), lse.stride(0) if store_lse else 0, scale * LOG2E,
            prev_pow2(max_len), prev_pow2(max_prefix))
    consts = {"HEAD_DIM": d, "BLOCK_D": max(16, triton.next_power_of_2(d)), "GROUP": h // k.shape[1],
              "PREC": "ieee" if q.dtype == torch.float32 else "tf32",
              "UPCAST": _interpreting() and q.dtype == torch.bfloat16, "STORE_LSE": store_lse}
    n_hist, n_cond = tiles.history.shape[0], tiles.conditions.shape[0]
    if n_hist:
        args = (*common, tiles.history, *rest)
        if _interpreting():
            grid = (n_hist * (TILE // INTERPRET_CONFIG["BLOCK_M"]), h)
            _fwd_kernel[grid](*args, **consts, TILE_ROWS=TILE, QUERY=False, **INTERPRET_CONFIG)
        else:
            _fwd_tuned[lambda meta: (n_hist * (TILE // meta["BLOCK_M"]), h)](*args, **consts, TILE_ROWS=TILE,
                                                                           QUERY=False)
    if n_cond:
        args = (*common, tiles.conditions, *rest)
        rows = tiles.cond_rows
        if _interpreting():
            _fwd_kernel[(n_cond, h)](*args, **consts, TILE_ROWS=rows, QUERY=True, BLOCK_M=rows,
                                     BLOCK_N=INTERPRET_CONDITION_BLOCK_N)
        else:
            _cond_tuned[(n_cond, h)](*args, **consts, TILE_ROWS=rows, QUERY=True, BLOCK_M=rows)
    return out, lse
