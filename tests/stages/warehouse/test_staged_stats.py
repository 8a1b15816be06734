"""Staged files carry their stats into the day's one commit: the commit opens no parquet footer when every file
has its sidecar, writes the same add-action stats the footer path gives, and reads a footer (logged) only for
a file whose sidecar is missing, garbled or stale; a kill between a file and its sidecar leaves a run that
the rerun commits correctly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.core import phases
from stages.warehouse import sidecars
from stages.warehouse.facade import Warehouse
from stages.warehouse.staging import staging_dir
from stages.warehouse.stats import footer_stats

DAY = "2000-12-02"
CHUNKS = {0: [[1, 2, 3], [10, 11]], 1: [[20, 21, 22, 23], [30]]}  # disjoint user ranges: no key read either


def knowledge(users: list[int]) -> pa.Table:
    return pa.table({
        "user_id": pa.array(users, pa.int64()),
        "condition": [f"category=C{u % 2}" for u in users],
        "embedding": [[u / 2, -u / 4, 0.5] for u in users],
        "model_version": [None if u % 3 == 0 else "lum-2000-12-01" for u in users],
        "history_len": pa.array(users, pa.int32()),
    })


def stage(wh: Warehouse, run_id: str = "r1", chunks: dict[int, list[list[int]]] = CHUNKS) -> list[str]:
    """Stage ``chunks`` (shard -> chunks of user ids) and finish every shard; returns the staged relpaths."""
    paths = []
    for shard, parts in chunks.items():
        stager = wh.stage_partition("user_knowledge", ds=DAY, run_id=run_id, shard=f"{shard}/{len(chunks)}")
        for part in parts:
            stager.write(knowledge(part))
        stager.finish()
        paths += [f["path"] for f in stager.files]
    return paths


def sidecar(wh: Warehouse, relpath: str, run_id: str = "r1") -> Path:
    return Path(sidecars.sidecar_path(staging_dir(wh, "user_knowledge", DAY, run_id), relpath))


def actions(wh: Warehouse) -> list[dict]:
    """Add actions of the latest snapshot (path, size, stats), ordered by their smallest user_id."""
    table = wh.delta_table("user_knowledge")
    out = []
    for path in table.file_uris():
        rel = os.path.relpath(path.removeprefix("file://"), wh.table_uri("user_knowledge"))
        out.append(rel)
    log = {}
    for commit in sorted(Path(wh.table_uri("user_knowledge"), "_delta_log").glob("*.json")):
        for line in commit.read_text().splitlines():
            action = json.loads(line)
            if "add" in action:
                log[action["add"]["path"]] = action["add"]
    adds = [{"size": log[rel]["size"], "stats": json.loads(log[rel]["stats"]), "path": rel} for rel in out]
    return sorted(adds, key=lambda a: a["stats"]["minValues"]["user_id"])


def without_paths(adds: list[dict]) -> list[dict]:
    return [{"size": a["size"], "stats": a["stats"]} for a in adds]


def test_commit_with_sidecars_opens_no_footer_and_matches_the_footer_path(tmp_path, monkeypatch):
    recorded, footer = Warehouse(str(tmp_path / "a")), Warehouse(str(tmp_path / "b"))
    stage(recorded)
    for rel in stage(footer):  # the same rows, committed the old way: every stat from the file's footer
        sidecar(footer, rel).unlink()
    with monkeypatch.context() as patched:
        calls = []
        for name in ("read_metadata", "read_schema", "read_table", "ParquetFile"):
            patched.setattr(pq, name, lambda *a, _n=name, **k: calls.append(_n) or pytest.fail(f"pq.{_n} called"))
        recorded.commit_staged("user_knowledge", ds=DAY, run_id="r1")
        assert calls == []
    footer.commit_staged("user_knowledge", ds=DAY, run_id="r1")
    got, expected = actions(recorded), actions(footer)
    assert len(got) == 4 and without_paths(got) == without_paths(expected)
    for add in got:  # and both are the file's own footer, with the size on disk
        path = Path(recorded.table_uri("user_knowledge"), add["path"])
        assert add["stats"] == footer_stats(pq.read_metadata(path), exclude=("ds",))
        assert add["size"] == path.stat().st_size
    assert got[0]["stats"]["nullCount"]["model_version"] == 1 and got[0]["stats"]["maxValues"]["user_id"] == 3
    assert sorted(recorded.read("user_knowledge").column("user_id").to_pylist()) == [1, 2, 3, 10, 11, 20, 21, 22,
                                                                                      23, 30]


def test_missing_garbled_or_stale_sidecars_fall_back_to_the_footer_and_say_so(warehouse, caplog):
    wh = Warehouse(warehouse)
    paths = stage(wh)
    sidecar(wh, paths[0]).unlink()  # the writer died before it
    sidecar(wh, paths[1]).write_text('{"path": "x", "si')  # garbled
    stale = json.loads(sidecar(wh, paths[2]).read_text())
    stale["size"] += 1  # the file on disk is not the one the sidecar describes
    stale["stats"]["numRecords"] = 999
    sidecar(wh, paths[2]).write_text(json.dumps(stale))
    with caplog.at_level("WARNING"):
        wh.commit_staged("user_knowledge", ds=DAY, run_id="r1")
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("3 of 4 files had no recorded stats" in m for m in warned), warned
    assert any(f"stats sidecar of {paths[1]} is unusable" in m for m in warned), warned
    for add in actions(wh):
        path = Path(wh.table_uri("user_knowledge"), add["path"])
        assert add["stats"] == footer_stats(pq.read_metadata(path), exclude=("ds",))
    assert sum(a["stats"]["numRecords"] for a in actions(wh)) == 10


CHILD = """
import sys
from stages.warehouse.facade import Warehouse
from tests.stages.warehouse.test_staged_stats import DAY, knowledge
stager = Warehouse(sys.argv[1]).stage_partition("user_knowledge", ds=DAY, run_id="r1", shard="0/1")
for part in ([1, 2, 3], [10, 11], [20, 21]):
    stager.write(knowledge(part))
stager.finish()
"""


def test_kill_between_a_file_and_its_sidecar_then_the_rerun_commits(warehouse):
    # each write is two "staging" phases (the file, then its sidecar): the 4th begin is the 2nd file's sidecar
    env = {**os.environ, phases.KILL_ENV: "staging:4:0", "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    child = subprocess.run([sys.executable, "-c", CHILD, warehouse], env=env, capture_output=True, text=True,
                           timeout=120, start_new_session=True)
    assert child.returncode == -signal.SIGKILL, child.stderr
    wh = Warehouse(warehouse)
    written = sorted(Path(wh.table_uri("user_knowledge"), f"ds={DAY}").glob("*.parquet"))
    stats_dir = Path(staging_dir(wh, "user_knowledge", DAY, "r1"), sidecars.FOLDER)
    assert len(written) == 2 and len(list(stats_dir.glob("*.json"))) == 1  # the 2nd file has no sidecar
    with pytest.raises(ValueError, match="manifest missing for shard"):
        wh.commit_staged("user_knowledge", ds=DAY, run_id="r1")
    stage(wh, chunks={0: [[1, 2, 3], [10, 11], [20, 21]]})  # the rerun: a new attempt of the same run
    wh.commit_staged("user_knowledge", ds=DAY, run_id="r1")
    assert sorted(wh.read("user_knowledge").column("user_id").to_pylist()) == [1, 2, 3, 10, 11, 20, 21]
    adds = actions(wh)
    assert len(adds) == 3 and not {a["path"] for a in adds} & {str(p.relative_to(wh.table_uri("user_knowledge")))
                                                                 for p in written}
    for add in adds:
        path = Path(wh.table_uri("user_knowledge"), add["path"])
        assert add["stats"] == footer_stats(pq.read_metadata(path), exclude=("ds",))
