"""Local DDP: run one entry function as N processes on this host (CPU, gloo), like ``torchrun --standalone``.

Small models gain little from more intra-op threads (their matmuls are too small to split), so N processes
split every step's packed rows instead: the model equals one process's on the same global batch (with dropout
> 0 each rank draws its own masks). Ranks are spawned interpreters that meet through a rendezvous file in a
private temporary directory, so no port is chosen ahead; each sets RANK / WORLD_SIZE like torchrun and calls
the entry, and rank 0's result comes back. A failing rank stops the others (a survivor would wait in a
collective forever). GPUs: launch with torchrun (nccl) instead.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.multiprocessing as mp

log = logging.getLogger(__name__)


def run_workers(entry: Callable[..., dict], kwargs: Mapping[str, Any], *, world: int, name: str) -> dict:
    """Call ``entry(**kwargs)`` in ``world`` local gloo ranks; returns rank 0's (JSON-able) result.

    entry: a module-level function (the spawned ranks unpickle it by reference); kwargs: picklable.
    Raises RuntimeError "<name> worker rank R of N failed: <error>" when a rank fails (the rank's traceback
    is its ``__cause__``).
    """
    if world < 2:
        raise ValueError(f"run_workers needs world >= 2, got {world}")
    level = logging.getLogger().getEffectiveLevel()
    with tempfile.TemporaryDirectory(prefix=f"lum-{name}-") as tmp:
        out = Path(tmp)
        try:
            mp.spawn(_rank_main, args=(world, entry, dict(kwargs), str(out), level), nprocs=world, join=True)
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:  # the first failure; the rest stopped
            err = out / f"error-{exc.error_index}.txt"
            why = err.read_text() if err.is_file() else str(exc).strip().splitlines()[0]
            raise RuntimeError(f"{name} worker rank {exc.error_index} of {world} failed: {why}") from exc
        return json.loads((out / "result.json").read_text())


def _rank_main(rank: int, world: int, entry: Callable[..., dict], kwargs: dict, out: str, level: int) -> None:
    """One rank: join the group through the rendezvous file, run the entry, report its result or error."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    logging.basicConfig(level=level if rank == 0 else max(level, logging.WARNING),
                        format=f"%(asctime)s %(levelname)s %(name)s[rank{rank}]: %(message)s", datefmt="%H:%M:%S")
    try:
        dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=world)
        result = entry(**kwargs)
    except BaseException as exc:  # one line for the caller's error; spawn sends the traceback (its cause)
        Path(out, f"error-{rank}.txt").write_text(f"{type(exc).__name__}: {exc}")
        raise
    if rank == 0:
        Path(out, "result.json").write_text(json.dumps(result, default=str))
    dist.destroy_process_group()
