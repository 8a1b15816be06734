"""``--set workers=N``: run ``lum run pretrain`` as N DDP processes on this host (CPU, gloo).

Small models do not speed up with more intra-op threads (64-wide matmuls are too small to split): on the
2-core box one process trains at 28k tokens/s with 1 thread and no faster with 2. N processes of
``threads`` each (1 when threads = 0) split every step's packed rows instead: 2 processes train ML-1M at
43k tokens/s. The result equals one process on the same global batch (stages.training.loop DDP,
test_pretrain_ddp), so ``workers`` changes the wall time, not the model (with dropout > 0 each rank draws
its own masks: an equally valid run, not the same bits).

This is ``torchrun --nproc_per_node N lum run pretrain ...`` without a launcher: the parent picks a free
local port, spawns the ranks (fresh interpreters), waits, and returns rank 0's summary. A rank that fails
stops the others (a surviving rank would wait in a collective forever) and the parent raises one error
naming the rank and its error; nothing is published (rank 0 publishes only after training). A run that
is killed resumes from its checkpoint like a single-process run. GPUs: launch with torchrun (nccl).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)


def run_workers(cfg, *, ds: str, warehouse: str) -> dict:
    """Train with ``cfg.workers`` local DDP ranks; returns rank 0's summary (with "workers")."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    port = _free_port()
    child = dataclasses.replace(cfg, workers=1, threads=cfg.threads or 1)
    level = logging.getLogger().getEffectiveLevel()
    with tempfile.TemporaryDirectory(prefix="lum-pretrain-") as tmp:
        out = Path(tmp) / "summary.json"
        procs = [ctx.Process(target=_worker, args=(rank, cfg.workers, port, child, ds, warehouse, str(out), level),
                             name=f"pretrain-rank{rank}", daemon=True) for rank in range(cfg.workers)]
        log.info("pretrain: %d DDP workers on this host (gloo, port %d, %d thread(s) each)", cfg.workers, port,
                 child.threads)
        for p in procs:
            p.start()
        try:
            failed = _wait(procs)
        finally:
            for p in procs:
                if p.is_alive():
                    p.terminate()
                p.join()
        if failed is not None:
            rank, code = failed
            err = Path(tmp) / f"error-{rank}.txt"
            why = err.read_text() if err.is_file() else f"exit code {code}"
            raise RuntimeError(f"pretrain worker rank {rank} of {cfg.workers} failed: {why}")
        summary = json.loads(out.read_text())
    summary["workers"] = cfg.workers
    return summary


def _wait(procs) -> tuple[int, int] | None:
    """Block until every rank has exited; (rank, exit code) of the first failure, else None."""
    while True:
        for rank, p in enumerate(procs):
            if p.exitcode not in (None, 0):
                return rank, p.exitcode
        if all(p.exitcode == 0 for p in procs):
            return None
        time.sleep(0.2)


def _worker(rank: int, world: int, port: int, cfg, ds: str, warehouse: str, out: str, level: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    logging.basicConfig(level=level if rank == 0 else max(level, logging.WARNING),
                        format=f"%(asctime)s %(levelname)s %(name)s[rank{rank}]: %(message)s", datefmt="%H:%M:%S")
    import torch.distributed as dist

    from stages.pretrain.stage import run

    try:
        summary = run(cfg, ds=ds, warehouse=warehouse)
    except BaseException as exc:  # the parent names it in its one error; the traceback is in this rank's log
        Path(out).with_name(f"error-{rank}.txt").write_text(f"{type(exc).__name__}: {exc}")
        raise
    if rank == 0:
        Path(out).write_text(json.dumps(summary, default=str))
    if dist.is_initialized():
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
