"""Leases: one holder per (stage, ds), a one-line message for the loser, stale leases broken, and why they are
needed (delta-rs alone lets two overwrites of a new partition both commit)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake
from deltalake.transaction import AddAction

from stages.warehouse import lease

DS = "2000-01-01"


def test_second_holder_gets_one_line_naming_the_first(warehouse):
    with lease.hold(warehouse, "infer", [DS]) as paths:
        owner = json.loads(paths[0].read_text())
        assert owner["pid"] == os.getpid() and owner["ds"] == DS
        with pytest.raises(lease.LeaseHeld) as err, lease.hold(warehouse, "infer", [DS]):
            pass
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(f"stage infer for ds {DS} is being run by pid {os.getpid()}")
        assert owner["since"] in msg
        with lease.hold(warehouse, "join", [DS]), lease.hold(warehouse, "infer", ["2000-01-02"]):
            pass  # other stages and other days are free
    assert not paths[0].exists()  # released
    with lease.hold(warehouse, "infer", [DS]):
        pass


def test_many_days_are_all_or_nothing(warehouse):
    with lease.hold(warehouse, "join", ["2000-01-02"]):
        with pytest.raises(lease.LeaseHeld, match="2000-01-02"), lease.hold(warehouse, "join", [DS, "2000-01-02"]):
            pass
        assert not (Path(warehouse) / "_leases" / "join" / DS).exists()  # the day it took is given back


def test_lease_of_a_dead_process_is_broken(warehouse):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    path = Path(warehouse) / "_leases" / "pretrain" / DS
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"pid": child.pid, "host": os.uname().nodename, "since": "x", "token": "t"}))
    with lease.hold(warehouse, "pretrain", [DS]) as paths:
        assert json.loads(paths[0].read_text())["pid"] == os.getpid()


def test_lease_of_another_host_is_stale_only_after_its_heartbeat_stops(warehouse, monkeypatch):
    path = Path(warehouse) / "_leases" / "pretrain" / DS
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "2000-01-01T00:00:00+00:00", "token": "t"}))
    with pytest.raises(lease.LeaseHeld, match="pid 1 on host elsewhere"), lease.hold(warehouse, "pretrain", [DS]):
        pass
    old = time.time() - lease.STALE_S - 5
    os.utime(path, (old, old))
    with lease.hold(warehouse, "pretrain", [DS]):
        pass
    path.write_text("{}")
    monkeypatch.setenv(lease.STALE_ENV, "soon")
    with pytest.raises(ValueError, match=lease.STALE_ENV):
        lease.is_stale(path, {"host": "elsewhere"})


def test_ranks_of_one_job_share_the_lease_and_the_creator_releases_it(warehouse):
    with lease.hold(warehouse, "infer", [DS], job="run-1") as paths:
        with lease.hold(warehouse, "infer", [DS], job="run-1"):
            pass
        assert paths[0].exists()  # the joining rank did not release it
        with pytest.raises(lease.LeaseHeld, match="job run-1"), lease.hold(warehouse, "infer", [DS], job="run-2"):
            pass
    assert not paths[0].exists()


def test_remote_warehouses_run_without_a_lease():
    assert lease.lease_root("s3://bucket/lum") is None
    with lease.hold("s3://bucket/lum", "infer", [DS]) as paths:
        assert paths == []


def _race(root: str, barrier, out) -> None:
    barrier.wait()
    try:
        with lease.hold(root, "join", [DS]):
            time.sleep(0.5)
        out.put("won")
    except lease.LeaseHeld as exc:
        out.put(str(exc))


def test_racing_processes_one_wins(warehouse):
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(warehouse, barrier, out)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert results.count("won") == 1, results
    assert all(r.startswith(f"stage join for ds {DS} is being run by pid ") for r in results if r != "won")


def _add(root: Path, name: str, value: int) -> AddAction:
    (root / "ds=d1").mkdir(exist_ok=True)
    pq.write_table(pa.table({"x": [value]}), root / "ds=d1" / f"{name}.parquet")
    st = (root / "ds=d1" / f"{name}.parquet").stat()
    return AddAction(path=f"ds=d1/{name}.parquet", size=st.st_size, partition_values={"ds": "d1"},
                     modification_time=int(st.st_mtime * 1000), data_change=True, stats=json.dumps({"numRecords": 1}))


def test_why_delta_alone_is_not_enough_two_overwrites_of_a_new_partition_both_commit(tmp_path):
    root = tmp_path / "t"
    write_deltalake(str(root), pa.table({"ds": ["d0"], "x": [0]}), partition_by=["ds"])
    first, second = DeltaTable(str(root)), DeltaTable(str(root))  # two runs that read the same snapshot
    for table, name, value in ((first, "a", 1), (second, "b", 2)):
        table.create_write_transaction([_add(root, name, value)], "overwrite", table.schema(), partition_by=["ds"],
                                       partition_filters=[("ds", "=", "d1")])
    rows = DeltaTable(str(root)).to_pyarrow_table(filters=[("ds", "=", "d1")]).column("x").to_pylist()
    assert sorted(rows) == [1, 2]  # both runs' rows in one partition: what the lease prevents
