"""Triton backward of plain packed causal attention (prefix_lens == lengths: pretraining).

FA2-style: a dQ kernel per query tile, and a dK/dV kernel per key tile and kv head that loops over that
kv head's GROUP query heads, so no atomics are needed. Both use the forward's log-sum-exp and
delta = rowsum(dO * O), and the forward's tile table (every tile is a history tile here).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.tiles import TILE
from kernels.triton_forward import LOG2E, _dot, _interpreting


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
