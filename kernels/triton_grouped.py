"""Triton jagged grouped-query masked attention (flash-attention style) and its causal backward.

Layout (CONTRACT.md): q (T, H, D), k/v (T, H_kv, D), H % H_kv == 0, cu_seqlens (B+1,) int32,
prefix_lens (B,) int32. Sequence b = [history tokens 0..P-1 | N condition tokens P..L-1].

Tile scheduler. The host builds a table of 128-row tiles, each (sequence, first row, kind):
  * prefix tiles cover rows [0, P) in steps of 128: causal. Key blocks [0, m_start) are fully visible and
    run without any per-element mask; only the diagonal blocks [m_start, m_start + BLOCK_M) are masked.
  * condition tiles cover rows [P, L) in steps of 128: each row sees keys [0, P) (all full blocks
    unmasked, at most one partial block masked on n < P) plus itself, added as one extra online-softmax
    term sum(q * k_self) - never a (BLOCK_M x BLOCK_M) diagonal matmul, and never another condition's key.
No key block outside a tile's visible range is loaded; nothing outside the tile's own sequence is read.
Grid = (n_tiles * 128 // BLOCK_M, H): axis 0 holds the large dimension (< 2^31 programs: 2^38 tokens),
axis 1 the heads (<= 65535). Tiles are sorted by cost (keys visited) descending so that the long tiles of
one very long sequence start first (longest-processing-time scheduling for jagged batches).
Offsets are int64 before any multiply by a stride. Accumulation in fp32 (online softmax in base 2);
fp32 inputs use IEEE dots (no TF32) so fp32 stays fp32-accurate. D is padded to the next power of two
(BLOCK_D) with masks, so 48 or 80 work.

Autotuning: BLOCK_M in {64, 128}, BLOCK_N in {32, 64, 128}, warps, stages; keyed on the previous power of
two of max length and max prefix (new lengths do not re-tune), pruned by ``prune_configs``. Under
TRITON_INTERPRET=1 a single fixed small config is used (the interpreter runs programs serially).

Backward: only plain packed causal attention (prefix_lens == lengths, pretraining): FA2-style dQ kernel
(per query tile) and dK/dV kernel (per key tile and kv head, looping over its GROUP query heads, so no
atomics), using the forward's log-sum-exp and delta = rowsum(dO * O).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

TILE = 128  # rows per scheduled tile; BLOCK_M divides it, so one tile table serves every config
LOG2E = 1.4426950408889634


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _prev_pow2(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


@triton.jit
def _dot(a, b, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """tl.dot with fp32 accumulation. UPCAST (interpreter + bf16 only): Triton 3.7's interpreter
    multiplies bf16 operands wrongly (measured: errors ~1e10), so there the operands go to fp32 first."""
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
                PREC: tl.constexpr, UPCAST: tl.constexpr, STORE_LSE: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr):
    SUB: tl.constexpr = TILE_ROWS // BLOCK_M
    pid = tl.program_id(0)
    head = tl.program_id(1)
    tile = pid // SUB
    seq = tl.load(TILES + tile * 3)
    m_start = tl.load(TILES + tile * 3 + 1) + (pid % SUB) * BLOCK_M
    is_query = tl.load(TILES + tile * 3 + 2)
    seq_start = tl.load(CU + seq)
    seq_len = tl.load(CU + seq + 1) - seq_start
    prefix = tl.load(PREFIX + seq)
    row_end = tl.where(is_query != 0, seq_len, prefix)
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
    if is_query == 0:
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


def prune_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Drop configs that cannot win: BLOCK_N > BLOCK_M (diagonal split needs BLOCK_M % BLOCK_N == 0),
    BLOCK_M=128 for short sequences (< 128 rows: half-empty tiles), BLOCK_N above the bucketed max
    prefix, and 128x128 tiles at D=128 (register spills)."""
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


_fwd_tuned = triton.autotune(configs=_configs(), key=["SEQLEN_BUCKET", "PREFIX_BUCKET", "HEAD_DIM", "GROUP"],
                             prune_configs_by={"early_config_prune": prune_configs})(_fwd_kernel)
# A single small config under the interpreter: it exercises multi-block loops and 2 sub-tiles per tile.
INTERPRET_CONFIG = {"BLOCK_M": 64, "BLOCK_N": 32}


def build_tiles(offsets: list[int], prefixes: list[int], *, tile: int = TILE) -> torch.Tensor:
    """Tile table (n_tiles, 3) int32 rows (sequence, first row, is_condition_tile), sorted by cost
    (keys visited) descending. Host-side, O(n_tiles)."""
    cu = torch.tensor(offsets, dtype=torch.int64)
    pre = torch.tensor(prefixes, dtype=torch.int64)
    conds = cu[1:] - cu[:-1] - pre
    n_seq = pre.numel()
    parts = []
    for kind, counts_of, first_row in ((0, pre, torch.zeros_like(pre)), (1, conds, pre)):
        counts = (counts_of + tile - 1) // tile
        seq = torch.repeat_interleave(torch.arange(n_seq), counts)
        within = torch.arange(seq.numel()) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        start = first_row[seq] + within * tile
        cost = start + tile if kind == 0 else pre[seq] + 1
        parts.append((torch.stack([seq, start, torch.full_like(seq, kind)], 1), cost))
    table = torch.cat([p[0] for p in parts])
    cost = torch.cat([p[1] for p in parts])
    return table[torch.argsort(cost, descending=True, stable=True)].to(torch.int32).contiguous()


def _forward(q, k, v, cu_seqlens, prefix_lens, tiles, scale, *, max_len, max_prefix, store_lse,
             out=None):
    t, h, d = q.shape
    out = torch.empty_like(q) if out is None else out
    lse = torch.empty((h, t), dtype=torch.float32, device=q.device) if store_lse else out
    if t == 0 or tiles.shape[0] == 0:
        return out, lse
    n_tiles = tiles.shape[0]
    args = (q, k, v, out, lse, cu_seqlens, prefix_lens, tiles,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            out.stride(0), out.stride(1), lse.stride(0) if store_lse else 0, scale * LOG2E,
            _prev_pow2(max_len), _prev_pow2(max_prefix))
    consts = {"HEAD_DIM": d, "BLOCK_D": max(16, triton.next_power_of_2(d)), "GROUP": h // k.shape[1],
                  "TILE_ROWS": TILE, "PREC": "ieee" if q.dtype == torch.float32 else "tf32",
                  "UPCAST": _interpreting() and q.dtype == torch.bfloat16, "STORE_LSE": store_lse}
    if _interpreting():
        grid = (n_tiles * (TILE // INTERPRET_CONFIG["BLOCK_M"]), h)
        _fwd_kernel[grid](*args, **consts, **INTERPRET_CONFIG)
    else:
        _fwd_tuned[lambda meta: (n_tiles * (TILE // meta["BLOCK_M"]), h)](*args, **consts)
    return out, lse


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, DQ, LSE, DELTA, CU, TILES,
                   stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_lh,
                   qk_scale, sm_scale, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, GROUP: tl.constexpr,
                   TILE_ROWS: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
                   BLOCK: tl.constexpr):
    """dQ for causal rows [m_start, m_start + BLOCK) of one head; q/do/dq share q's strides."""
    SUB: tl.constexpr = TILE_ROWS // BLOCK
    pid = tl.program_id(0)
    head = tl.program_id(1)
    tile = pid // SUB
    seq = tl.load(TILES + tile * 3)
    m_start = tl.load(TILES + tile * 3 + 1) + (pid % SUB) * BLOCK
    seq_start = tl.load(CU + seq)
    seq_len = tl.load(CU + seq + 1) - seq_start
    if m_start >= seq_len:
        return
    offs_m = m_start + tl.arange(0, BLOCK)
    offs_n = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    row_ok = offs_m < seq_len
    rows64 = seq_start.to(tl.int64) + offs_m.to(tl.int64)
    head64 = head.to(tl.int64)
    kv_head64 = (head // GROUP).to(tl.int64)
    io = rows64[:, None] * stride_qt + head64 * stride_qh + offs_d[None, :]
    io_mask = row_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + io, mask=io_mask, other=0.0)
    do = tl.load(DO + io, mask=io_mask, other=0.0)
    lse = tl.load(LSE + head64 * stride_lh + rows64, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + head64 * stride_lh + rows64, mask=row_ok, other=0.0)
    k_base = K + seq_start.to(tl.int64) * stride_kt + kv_head64 * stride_kh
    v_base = V + seq_start.to(tl.int64) * stride_vt + kv_head64 * stride_vh
    dq = tl.zeros([BLOCK, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, tl.minimum(m_start + BLOCK, seq_len), BLOCK):
        n = start_n + offs_n
        n64 = n.to(tl.int64)
        key_ok = n < seq_len
        kv_mask = key_ok[:, None] & d_ok[None, :]
        kb = tl.load(k_base + n64[:, None] * stride_kt + offs_d[None, :], mask=kv_mask, other=0.0)
        vb = tl.load(v_base + n64[:, None] * stride_vt + offs_d[None, :], mask=kv_mask, other=0.0)
        qk = _dot(q, tl.trans(kb), PREC, UPCAST) * qk_scale
        p = tl.exp2(qk - lse[:, None])
        p = tl.where(key_ok[None, :] & (n[None, :] <= offs_m[:, None]), p, 0.0)
        dp = _dot(do, tl.trans(vb), PREC, UPCAST)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(kb.dtype), kb, PREC, UPCAST)
    tl.store(DQ + io, (dq * sm_scale).to(DQ.dtype.element_ty), mask=io_mask)


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, CU, TILES,
                     stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_lh,
                     qk_scale, sm_scale, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, GROUP: tl.constexpr,
                     TILE_ROWS: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
                   BLOCK: tl.constexpr):
    """dK, dV for causal key rows [n_start, n_start + BLOCK) of one kv head, summed over its GROUP query
    heads; query blocks from the diagonal to the sequence end (earlier rows cannot see these keys)."""
    SUB: tl.constexpr = TILE_ROWS // BLOCK
    pid = tl.program_id(0)
    kv_head = tl.program_id(1)
    tile = pid // SUB
    seq = tl.load(TILES + tile * 3)
    n_start = tl.load(TILES + tile * 3 + 1) + (pid % SUB) * BLOCK
    seq_start = tl.load(CU + seq)
    seq_len = tl.load(CU + seq + 1) - seq_start
    if n_start >= seq_len:
        return
    offs_n = n_start + tl.arange(0, BLOCK)
    offs_m = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    key_ok = offs_n < seq_len
    keys64 = seq_start.to(tl.int64) + offs_n.to(tl.int64)
    kv_head64 = kv_head.to(tl.int64)
    kv_mask = key_ok[:, None] & d_ok[None, :]
    k_io = keys64[:, None] * stride_kt + kv_head64 * stride_kh + offs_d[None, :]
    v_io = keys64[:, None] * stride_vt + kv_head64 * stride_vh + offs_d[None, :]
    kb = tl.load(K + k_io, mask=kv_mask, other=0.0)
    vb = tl.load(V + v_io, mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK, BLOCK_D], dtype=tl.float32)
    for g in tl.static_range(GROUP):
        head64 = kv_head64 * GROUP + g
        for start_m in range(n_start, seq_len, BLOCK):
            m = start_m + offs_m
            rows64 = seq_start.to(tl.int64) + m.to(tl.int64)
            row_ok = m < seq_len
            io = rows64[:, None] * stride_qt + head64 * stride_qh + offs_d[None, :]
            q = tl.load(Q + io, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            do = tl.load(DO + io, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            lse = tl.load(LSE + head64 * stride_lh + rows64, mask=row_ok, other=float("inf"))
            delta = tl.load(DELTA + head64 * stride_lh + rows64, mask=row_ok, other=0.0)
            qk_t = _dot(kb, tl.trans(q), PREC, UPCAST) * qk_scale  # (keys, rows)
            p_t = tl.exp2(qk_t - lse[None, :])
            p_t = tl.where(m[None, :] >= offs_n[:, None], p_t, 0.0)
            dv += _dot(p_t.to(do.dtype), do, PREC, UPCAST)
            dp_t = _dot(vb, tl.trans(do), PREC, UPCAST)
            ds_t = p_t * (dp_t - delta[None, :])
            dk += _dot(ds_t.to(q.dtype), q, PREC, UPCAST)
    tl.store(DK + k_io, (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + v_io, dv.to(DV.dtype.element_ty), mask=kv_mask)


def _backward(q, k, v, out, lse, grad_out, cu_seqlens, tiles, scale):
    t, h, d = q.shape
    h_kv = k.shape[1]
    grad_out = grad_out.contiguous()
    delta = (out.float() * grad_out.float()).sum(-1).transpose(0, 1).contiguous()  # (H, T), FA2's D_i
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if t == 0 or tiles.shape[0] == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    block = 32 if _interpreting() else 64
    consts = {"HEAD_DIM": d, "BLOCK_D": max(16, triton.next_power_of_2(d)), "GROUP": h // h_kv,
              "TILE_ROWS": TILE, "PREC": "ieee" if q.dtype == torch.float32 else "tf32",
              "UPCAST": _interpreting() and q.dtype == torch.bfloat16, "BLOCK": block}
    launch = {} if _interpreting() else {"num_warps": 4 if d <= 64 else 8, "num_stages": 2}
    strides = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), lse.stride(0),
               scale * LOG2E, scale)
    n_prog = tiles.shape[0] * (TILE // block)
    _bwd_dq_kernel[(n_prog, h)](q, k, v, grad_out, dq, lse, delta, cu_seqlens, tiles, *strides,
                                **consts, **launch)
    _bwd_dkdv_kernel[(n_prog, h_kv)](q, k, v, grad_out, dk, dv, lse, delta, cu_seqlens, tiles, *strides,
                                     **consts, **launch)
    return dq, dk, dv


class _CausalAttention(torch.autograd.Function):
    """Packed causal attention (prefix_lens == lengths) with the Triton forward and backward."""

    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens, prefix_lens, tiles, scale, max_len):
        out, lse = _forward(q, k, v, cu_seqlens, prefix_lens, tiles, scale, max_len=max_len,
                            max_prefix=max_len, store_lse=True)
        ctx.save_for_backward(q, k, v, out, lse, cu_seqlens, tiles)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, cu_seqlens, tiles = ctx.saved_tensors
        dq, dk, dv = _backward(q, k, v, out, lse, grad_out, cu_seqlens, tiles, ctx.scale)
        return dq, dk, dv, None, None, None, None, None


def triton_grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                             prefix_lens: torch.Tensor, *, scale: float | None = None,
                             offsets: list[int] | None = None, prefixes: list[int] | None = None,
                             out: torch.Tensor | None = None) -> torch.Tensor:
    """Launch the Triton kernel. q: (T, H, D), k/v: (T, H_kv, D), cu_seqlens (B+1,) int32, prefix_lens (B,)
    int32, all contiguous on one device (validated by the dispatcher). ``offsets``/``prefixes``: host
    copies (saves a sync). ``out``: optional preallocated (T, H, D) output (tests poison it with NaN).
    Differentiable only when prefix_lens == lengths. Returns (T, H, D) in q.dtype."""
    _t, _h, d = q.shape
    scale = d ** -0.5 if scale is None else float(scale)
    offsets = [int(x) for x in cu_seqlens.tolist()] if offsets is None else offsets
    prefixes = [int(x) for x in prefix_lens.tolist()] if prefixes is None else prefixes
    lengths = [offsets[b + 1] - offsets[b] for b in range(len(prefixes))]
    max_len = max(lengths, default=0)
    tiles = build_tiles(offsets, prefixes).to(q.device)
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if needs_grad:
        if prefixes != lengths:
            raise ValueError("prefix_lens must equal the sequence lengths for the triton backward")
        return _CausalAttention.apply(q, k, v, cu_seqlens, prefix_lens, tiles, scale, max_len)
    result, _ = _forward(q, k, v, cu_seqlens, prefix_lens, tiles, scale, max_len=max_len,
                         max_prefix=max(prefixes, default=0), store_lse=False, out=out)
    return result
