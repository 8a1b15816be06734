"""Scale-out of the infer stage: hash shards, one publishing commit (stages.infer.stage)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_infer import DS, publish_model, read_sorted, write_items, write_sequences

from stages.infer.chunks import shard_of
from stages.infer.stage import Config, run
from stages.warehouse.facade import Warehouse


@pytest.fixture
def wh_ready(warehouse):
    publish_model(warehouse)
    write_sequences(warehouse, n_users=40)
    write_items(warehouse)
    return warehouse


def test_two_shards_then_commit_equal_one_process(wh_ready, copy_warehouse):
    single_wh = copy_warehouse(wh_ready)
    run(Config(chunk_users=8), ds=DS, warehouse=single_wh)
    single = read_sorted(single_wh)

    s0 = run(Config(chunk_users=8, shard="0/2"), ds=DS, warehouse=wh_ready)
    with pytest.raises(ValueError, match="manifest missing for shard"):
        run(Config(shard="commit/2"), ds=DS, warehouse=wh_ready)
    s1 = run(Config(chunk_users=8, shard="1/2"), ds=DS, warehouse=wh_ready)
    assert not Warehouse(wh_ready).exists("user_knowledge")  # nothing visible before the commit
    assert s0["run_id"] == s1["run_id"] and "commit/2" in s0["next"]
    assert s0["users"] + s1["users"] == 39 and min(s0["users"], s1["users"]) > 5
    assert s0["item_rows"] + s1["item_rows"] == 40
    done = run(Config(shard="commit/2"), ds=DS, warehouse=wh_ready)
    assert done["run_id"] == s0["run_id"] and set(done["versions"]) == {"user_knowledge", "item_knowledge"}

    sharded = read_sorted(wh_ready)
    assert sharded.select(["user_id", "condition", "history_len", "model_version"]) == \
        single.select(["user_id", "condition", "history_len", "model_version"])
    np.testing.assert_allclose(np.asarray(sharded.column("embedding").to_pylist()),
                               np.asarray(single.column("embedding").to_pylist()), atol=1e-6)
    assert read_sorted(wh_ready, "item_knowledge").drop_columns(["ds"]).equals(
        read_sorted(single_wh, "item_knowledge").drop_columns(["ds"]))
    # each shard's files hold only its own users: disjoint hash partitions
    files = Warehouse(wh_ready).delta_table("user_knowledge").get_add_actions(flatten=True)
    paths = files.column("path").to_pylist()
    for shard in (0, 1):
        mine = [p for p in paths if f"-s{shard}of2-" in p]
        assert mine
        import pyarrow.parquet as pq

        ids = np.concatenate([pq.read_table(os.path.join(wh_ready, "user_knowledge", p), columns=["user_id"])
                              .column("user_id").to_numpy() for p in mine])
        assert (shard_of(ids, 2) == shard).all()
    # a repeated commit of the same run is a no-op
    again = run(Config(shard="commit/2"), ds=DS, warehouse=wh_ready)
    assert again["versions"] == done["versions"]


@pytest.mark.slow
def test_torchrun_two_ranks_commit_once(wh_ready, tmp_path):
    """Two processes under torchrun: ranks hash-share the users, meet at a gloo barrier, rank 0 commits."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "stages", "run", "infer", "--ds", DS, "--warehouse", wh_ready, "--set", "chunk_users=8"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[3])  # the repository root
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 2
    assert {s["shard"] for s in summaries} == {"0/2", "1/2"}
    assert sum(s["users"] for s in summaries) == 39
    assert sum(1 for s in summaries if s.get("versions")) == 1  # only rank 0 committed
    assert read_sorted(wh_ready).num_rows == 39 * 4
    assert Warehouse(wh_ready).version("user_knowledge") == 0  # one commit created the table
