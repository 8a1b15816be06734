"""Process-group plumbing of the training loop: joining a torchrun (or stages.training.workers) group, and the
two collectives a step needs (the union of the ranks' targets, the global mean loss), and ``global_max`` (the
step count the ranks agree on).

``group`` arguments are ``torch.distributed`` inside a process group and None in a single process
(``dist_info``), so one code path serves both.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist

from stages.core.device import resolve_device

log = logging.getLogger(__name__)


def dist_info():
    """(torch.distributed, rank, world size) inside a process group, else (None, 0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist, dist.get_rank(), dist.get_world_size()
    return None, 0, 1


def launched_world_size() -> int:
    """WORLD_SIZE set by torchrun (or stages.training.workers) for this process; 1 when run on its own."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: torch.device | None = None) -> bool:
    """Join the torchrun process group when WORLD_SIZE > 1: nccl when ``device`` (default: resolve_device's
    "auto") is CUDA, else gloo. Already joined (stages.training.workers): nothing to do."""
    if launched_world_size() <= 1 or dist.is_initialized():
        return dist.is_initialized()
    device = device if device is not None else resolve_device("auto")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    log.info("DDP: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), dist.get_backend())
    return True


def gather_targets(items: torch.Tensor, group) -> tuple[torch.Tensor, int]:
    """Every rank's targets concatenated in rank order (``group`` None: this process's own) and their count."""
    if group is None:
        return items, int(items.numel())
    n = torch.tensor([items.numel()], device=items.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    m = int(max(s.item() for s in sizes))
    padded = torch.zeros(m, dtype=items.dtype, device=items.device)
    padded[: items.numel()] = items
    bufs = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(bufs, padded)
    allt = torch.cat([b[: int(s.item())] for b, s in zip(bufs, sizes)])
    return allt, int(allt.numel())


def global_mean(loss_sum: torch.Tensor, n_global: int, group) -> float:
    """The loss summed over every rank, divided by the global batch's ``n_global`` positions."""
    if group is None:
        return float(loss_sum) / max(1, n_global)
    t = loss_sum.clone().float()
    dist.all_reduce(t)
    return float(t) / max(1, n_global)


def global_max(value: int, group, device: torch.device) -> int:
    """The largest ``value`` of any rank (``group`` None: this process's own)."""
    if group is None:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())
