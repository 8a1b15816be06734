"""The attention methods `kernels.bench` compares, each built once per batch and returned as ``run()``.

Every ``run()`` goes from packed (T, H, D) inputs to the packed output, as one model layer would call
it (pads, gathers and scatters included). Per-batch metadata that every layer shares (the plan's host
copies and Triton tile tables, index tensors, the dense mask, the flex block mask) is built by the builder,
outside the timed call, as the model builds it once per batch.
  triton          kernels.plan_grouped_attention(backend="triton"), as the model's layers call it
  triton_per_call kernels.grouped_query_attention(backend="triton"): the batch checked (two host copies,
                  each a device sync) and tiled inside every call
  torch_grouped   plan_grouped_attention(backend="torch"): history once + conditions against it, bucketed SDPA
  sdpa_dense      kernels.sdpa_mask: SDPA with a dense (B, 1, L, L) boolean mask, one sequence per row
  flex_compiled   torch.compile(flex_attention) with a block mask over the packed batch
  naive           one causal pass per condition: B*N sequences [history, condition] (LUM without the
                  grouped query), SDPA is_causal on right-padded tensors
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from kernels.dispatch import grouped_query_attention, plan_grouped_attention
from kernels.sdpa_mask import mask_layout, masked_attention

Run = Callable[[], torch.Tensor]


def make_batch(users: int, prefix: int, conditions: int, heads: int, kv_heads: int, head_dim: int,
               dtype: torch.dtype, device: str, jitter: float, seed: int) -> dict[str, Any]:
    """A packed jagged batch: prefixes uniform in [prefix*(1-jitter), prefix], N conditions each."""
    gen = torch.Generator().manual_seed(seed)
    low = max(0, int(prefix * (1 - jitter)))
    prefixes = torch.randint(low, prefix + 1, (users,), generator=gen)
    lengths = prefixes + conditions
    cu = torch.zeros(users + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lengths, 0)
    t = int(cu[-1])

    def rand(h: int) -> torch.Tensor:
        return torch.randn(t, h, head_dim, generator=gen).to(device=device, dtype=dtype)

    return {"q": rand(heads), "k": rand(kv_heads), "v": rand(kv_heads), "cu": cu.to(device),
            "prefix_lens": prefixes.to(torch.int32).to(device), "offsets": cu.tolist(),
            "prefixes": prefixes.tolist(), "conditions": conditions, "scale": head_dim ** -0.5}


def useful_flops(batch: dict[str, Any]) -> float:
    """4 * H * D * visible (query, key) pairs (QK^T and PV, 2 FLOPs per multiply-add)."""
    _, h, d = batch["q"].shape
    n = batch["conditions"]
    pairs = sum(p * (p + 1) // 2 + n * (p + 1) for p in batch["prefixes"])
    return 4.0 * h * d * pairs


def _zero_row(x: torch.Tensor) -> torch.Tensor:
    """(T, H, D) -> (T+1, H, D) with a zero last row: gathers read padding from index T."""
    return torch.cat([x, x.new_zeros((1, *x.shape[1:]))])


def grouped(batch: dict[str, Any], backend: str) -> Run:
    """The plan (checks, host copies, tile tables) is built here and on the builder's first call."""
    attend = plan_grouped_attention(batch["cu"], batch["prefix_lens"], scale=batch["scale"], backend=backend)

    def run() -> torch.Tensor:
        return attend(batch["q"], batch["k"], batch["v"])
    return run


def per_call(batch: dict[str, Any], backend: str) -> Run:
    def run() -> torch.Tensor:
        return grouped_query_attention(batch["q"], batch["k"], batch["v"], batch["cu"], batch["prefix_lens"],
                                       scale=batch["scale"], backend=backend)
    return run


def dense(batch: dict[str, Any]) -> Run:
    """kernels.sdpa_mask with one sequence per row; the layout (placement and mask) is built here."""
    layout = mask_layout(batch["cu"], batch["prefix_lens"])

    def run() -> torch.Tensor:
        return masked_attention(batch["q"], batch["k"], batch["v"], layout, scale=batch["scale"])
    return run


def naive(batch: dict[str, Any]) -> Run:
    """B*N sequences [prefix_b, condition_j] (right-padded, is_causal); history outputs come from each
    user's first pass, condition outputs from the last row of each pass. Gathers/scatters are timed."""
    offsets, prefixes, n = batch["offsets"], batch["prefixes"], batch["conditions"]
    device, t = batch["q"].device, offsets[-1]
    users = len(prefixes)
    starts = torch.tensor(offsets[:-1]).repeat_interleave(n)
    pre = torch.tensor(prefixes).repeat_interleave(n)
    cond = torch.arange(n).repeat(users)
    ar = torch.arange(max(prefixes) + 1)
    idx = torch.where(ar[None, :] < pre[:, None], starts[:, None] + ar[None, :],
                      starts[:, None] + pre[:, None] + cond[:, None])
    idx = torch.where(ar[None, :] <= pre[:, None], idx, t).to(device)
    first = cond == 0
    hist_valid = (ar[None, :] < pre[:, None])[first].to(device)  # (B, P_max + 1)
    hist_pos = idx[first.to(device)][hist_valid]
    cond_pos = (starts + pre + cond).to(device)
    last = pre.to(device)
    gqa = batch["q"].shape[1] != batch["k"].shape[1]

    def run() -> torch.Tensor:
        qp, kp, vp = (_zero_row(batch[n])[idx].transpose(1, 2) for n in "qkv")
        out = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, scale=batch["scale"], enable_gqa=gqa)
        out = out.transpose(1, 2)  # (B*N, P_max + 1, H, D)
        packed = out.new_empty((t, *out.shape[2:]))
        packed.index_copy_(0, hist_pos, out[first.to(device)][hist_valid])
        packed.index_copy_(0, cond_pos, out[torch.arange(out.shape[0], device=device), last])
        return packed
    return run


def flex(batch: dict[str, Any]) -> Run:
    """Compiled FlexAttention over the packed batch (B=1, T tokens) with a document + grouped block mask.
    On CUDA the block mask is built by a compiled pass (block by block: a (T, T) mask would not fit)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # deferred: compiler stack

    offsets, prefixes = batch["offsets"], batch["prefixes"]
    device = batch["q"].device
    lengths = torch.tensor([offsets[b + 1] - offsets[b] for b in range(len(prefixes))])
    t = int(lengths.sum())
    doc = torch.repeat_interleave(torch.arange(len(prefixes)), lengths).to(device)
    pos = (torch.arange(t) - torch.repeat_interleave(torch.tensor(offsets[:-1]), lengths)).to(device)
    pre_tok = torch.repeat_interleave(torch.tensor(prefixes), lengths).to(device)

    def mask_mod(b, h, q_idx, kv_idx):
        qp, kp, pp = pos[q_idx], pos[kv_idx], pre_tok[q_idx]
        return (doc[q_idx] == doc[kv_idx]) & torch.where(qp < pp, kp <= qp, (kp < pp) | (kp == qp))

    block_mask = create_block_mask(mask_mod, 1, 1, t, t, device=str(device), _compile=device.type == "cuda")
    compiled = torch.compile(flex_attention, dynamic=False)
    gqa = batch["q"].shape[1] != batch["k"].shape[1]

    def run() -> torch.Tensor:
        q4, k4, v4 = (batch[n].transpose(0, 1)[None] for n in "qkv")
        out = compiled(q4, k4, v4, block_mask=block_mask, scale=batch["scale"], enable_gqa=gqa)
        return out[0].transpose(0, 1)
    return run


BUILDERS: dict[str, Callable[[dict[str, Any]], Run]] = {
    "triton": lambda batch: grouped(batch, "triton"),
    "triton_per_call": lambda batch: per_call(batch, "triton"),
    "torch_grouped": lambda batch: grouped(batch, "torch"),
    "sdpa_dense": dense,
    "flex_compiled": flex,
    "naive": naive,
}
