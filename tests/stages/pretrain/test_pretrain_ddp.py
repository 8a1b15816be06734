"""DDP: 2 gloo processes end with the same weights and loss as 1 process on the same global batch; pretrain's
ranks each stream their own users."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stages.core.config import from_mapping
from stages.model import store as model_store
from stages.pretrain import stage as pretrain
from stages.pretrain import stream
from stages.warehouse.facade import Warehouse
from tests.stages.pretrain_fixtures import TINY, make_warehouse

WORKER = Path(__file__).resolve().parents[1] / "ddp_worker.py"


def _run(cmd: list[str], out: Path, rows_per_step: int) -> dict:
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd + [str(out), str(rows_per_step)], capture_output=True, text=True, timeout=300, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "stats.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("rows_per_step", [4, 1], ids=["rows-split", "fewer-rows-than-ranks"])
def test_ddp_two_processes_match_one(tmp_path, rows_per_step):
    """rows_per_step 1: rank 1 has no row of its own in any step and must neither hang nor change the result."""
    one = _run([sys.executable, str(WORKER)], tmp_path / "one", rows_per_step)
    # --standalone: a rendezvous on a port the OS picks, so concurrent runs on one host never collide
    two = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                str(WORKER)], tmp_path / "two", rows_per_step)
    assert one["world"] == 1 and two["world"] == 2 and one["steps"] == two["steps"]
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
    w1 = torch.load(tmp_path / "one" / "weights.pt")
    w2 = torch.load(tmp_path / "two" / "weights.pt")
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.slow
def test_pretrain_workers_stream_their_own_users(tmp_path, monkeypatch):
    """`--set workers=2` (2 local gloo ranks, each streaming its own users) trains every sequence and runs the
    step count the ranks agreed on: the most steps either rank's share needs (a different data order from one
    process, so the weights differ; the loop's DDP arithmetic is test_ddp_two_processes_match_one's)."""
    runs = {}
    for workers in (1, 2):
        wh = str(tmp_path / f"w{workers}")
        d1, = make_warehouse(wh, days=1)
        cfg = from_mapping(pretrain.Config, {**TINY, "dropout": 0.0, "threads": 1, "workers": workers})
        runs[workers] = pretrain.run(cfg, ds=d1, warehouse=wh)
    one, two = runs[1], runs[2]
    per_epoch = []
    for rank in range(2):  # each rank's share as it streams it
        monkeypatch.setattr(stream, "dist_info", lambda rank=rank: (None, rank, 2))
        plan = stream.Plan(max_len=cfg.model.max_len, windows=0, timed=cfg.model.time_features, eval=False)
        share = stream.open_stream(Warehouse(wh), d1, plan, shuffle_users=cfg.shuffle_users,
                                   row_tokens=cfg.train.row_tokens)
        per_epoch.append(share.steps.steps_per_epoch(cfg.train, rank, 2))
    assert two["workers"] == 2 and two["steps"] == math.ceil(cfg.train.epochs * max(per_epoch)) > 0
    assert (two["users"], two["sequences"]) == (one["users"], one["sequences"]) == (24, 24)
    assert math.isfinite(two["loss"]) and two["loss"] == pytest.approx(one["loss"], rel=0.5)


@pytest.mark.slow
def test_pretrain_workers_failure_is_one_clear_error(tmp_path):
    wh = str(tmp_path / "wh")
    make_warehouse(wh, days=1)
    cfg = from_mapping(pretrain.Config, {**TINY, "threads": 1, "workers": 2})
    with pytest.raises(RuntimeError, match=r"worker rank \d of 2 failed: ValueError: .*no partition ds=2000-02-01"):
        pretrain.run(cfg, ds="2000-02-01", warehouse=wh)
    assert model_store.list_versions(wh) == []
    with pytest.raises(ValueError, match="workers must be >= 1"):
        pretrain.run(from_mapping(pretrain.Config, {**TINY, "workers": 0}), ds="2000-01-01", warehouse=wh)
