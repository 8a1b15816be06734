"""Worker for test_pretrain_ddp: train a tiny LUM on fixed synthetic sequences, save weights and loss.

Run as ``torchrun --nproc_per_node 2 tests/stages/ddp_worker.py OUT [ROWS_PER_STEP]`` (DDP, gloo) or plainly
(1 process). ROWS_PER_STEP (default 4) = 1 leaves rank 1 without a row in every step.
``report_rank`` / ``fail_on_rank_1``: entry functions for the local launcher (stages.training.workers) tests.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from stages.model.lum import ModelConfig, build_model
from stages.model.timefeat import build_popularity
from stages.model.vocab import Vocab
from stages.training import loop as train_loop
from stages.training.distributed import dist_info, init_distributed
from stages.training.packing import Sequences


def main(out: str, rows_per_step: int = 4) -> None:
    torch.set_num_threads(1)
    init_distributed()
    _, rank, world = dist_info()
    rng = np.random.default_rng(0)
    vocab = Vocab.build(range(1, 41), [f"g{i % 4}" for i in range(40)])
    items = [rng.integers(1, 41, size=n) for n in rng.integers(1, 12, size=48)]
    day = 86_400
    ts = [10 * day + np.sort(rng.integers(0, 20 * day, size=len(x))) for x in items]  # days 10..29
    seqs = Sequences.from_lists(items, [vocab.item_conditions()[x] for x in items], ts)
    flat_day, flat_item = np.concatenate(ts) // day, np.concatenate(items)
    popularity = build_popularity(flat_day, flat_item, np.ones_like(flat_item), n_item_rows=41, first_day=10,
                                  last_day=30, window=5)  # the default model is time-aware
    torch.manual_seed(0)
    model = build_model(ModelConfig(d_model=16, n_heads=2, n_layers=2, d_ff=32, dropout=0.0, max_len=12,
                                    d_item=8, d_feature=4), vocab)
    counts = torch.from_numpy(np.bincount(seqs.items, minlength=41).astype(np.float64))
    cfg = train_loop.TrainConfig(epochs=2, row_tokens=24, rows_per_step=rows_per_step, warmup_steps=2, sampled_negatives=6,
                                 logq=True, log_every_s=1000)
    stats = train_loop.train(model, seqs, cfg, item_counts=counts, ckpt_path=None, popularity=popularity)
    if rank == 0:
        torch.save(model.state_dict(), Path(out) / "weights.pt")
        (Path(out) / "stats.json").write_text(json.dumps({"loss": stats["loss"], "world": world,
                                                          "steps": stats["steps"]}))
    if world > 1:
        torch.distributed.destroy_process_group()


def report_rank(tag: str) -> dict:
    """Each rank's view of the group: rank 0's is what the launcher returns."""
    _, rank, world = dist_info()
    total = torch.tensor([rank + 1.0])
    torch.distributed.all_reduce(total)
    return {"tag": tag, "rank": rank, "world": world, "env_world": os.environ["WORLD_SIZE"], "sum": float(total)}


def fail_on_rank_1(why: str) -> dict:
    """Rank 1 raises at once; rank 0 would sleep far longer than the test allows unless the launcher stops it."""
    if dist_info()[1] == 1:
        raise ValueError(why)
    time.sleep(600)
    return {}


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 4)
