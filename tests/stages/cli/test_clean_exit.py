"""Processes that read the warehouse end with their own exit status, never in an abort at interpreter exit.

Reading Delta tables through delta-rs' Python filesystem handler can abort a process after its work is done
("terminate called without an active exception", status 134; stages/core/shutdown.py has the cause). Local
reads now use Arrow's native filesystem, and the ``lum`` process ends through ``end_process``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from tests.stages.cli.tiny_warehouse import DAYS, READ_TABLES, make_tiny_warehouse

REPO = str(Path(__file__).resolve().parents[3])
D = DAYS[1]

# The four-table read through the project's API, ending like any Python program (interpreter shutdown).
READER = f"""
import sys
from stages.warehouse.facade import Warehouse
wh = Warehouse(sys.argv[1])
print(sum(wh.read(name, ds={D!r}).num_rows for name in {READ_TABLES!r}))
"""
# delta-rs' own to_pyarrow_table (its Python filesystem handler), ended the way `lum` ends.
RAW_READER = f"""
import sys
from stages.core.shutdown import end_process
from stages.warehouse.facade import Warehouse
wh = Warehouse(sys.argv[1])
print(sum(wh.delta_table(name).to_pyarrow_table(filters=[("ds", "=", {D!r})]).num_rows for name in {READ_TABLES!r}))
end_process(0)
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return make_tiny_warehouse(str(tmp_path_factory.mktemp("tiny") / "warehouse"))


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=_env(), cwd=REPO, timeout=180)


def test_local_reads_use_arrows_native_filesystem(tiny):
    from stages.warehouse.facade import Warehouse
    from stages.warehouse.reads import local_root, pyarrow_dataset

    dataset = pyarrow_dataset(Warehouse(tiny).delta_table("events"), [("ds", "=", D)])
    assert isinstance(dataset.filesystem, pafs.SubTreeFileSystem)
    assert isinstance(dataset.filesystem.base_fs, pafs.LocalFileSystem)  # no PyFileSystem, no Python objects
    assert dataset.to_table().num_rows == Warehouse(tiny).read("events", ds=D).num_rows > 0
    assert local_root("file:///tmp/a%20b/events/") == "/tmp/a b/events/"
    assert local_root("/tmp/wh/events") == "/tmp/wh/events"
    assert local_root("s3://bucket/wh/events") is None


def test_lum_exit_statuses(tiny, tmp_path):
    ok = _run(["-m", "stages", "query", "--warehouse", tiny, "--ds", D, "--user-id", "3"])
    assert ok.returncode == 0 and json.loads(ok.stdout.strip().splitlines()[-1])["rows"] == 2
    usage = _run(["-m", "stages", "query", "--warehouse", str(tmp_path), "--user-id", "3"])
    assert usage.returncode == 2 and usage.stderr.strip().startswith("lum: error: table user_knowledge does not exist")
    assert _run(["-m", "stages", "no-such-command"]).returncode == 2
    assert _run(["-m", "stages", "--help"]).returncode == 0


@pytest.mark.slow
def test_reading_processes_never_abort_at_exit(tiny):
    """50 reading processes (2 at a time): `lum query`, the four-table read, delta-rs' own read; all exit 0."""
    query = ["-m", "stages", "query", "--warehouse", tiny, "--ds", D, "--user-id", "3", "--user-id", "7",
             "--format", "json"]
    runs = [query] * 20 + [["-c", READER, tiny]] * 15 + [["-c", RAW_READER, tiny]] * 15
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = list(pool.map(_run, runs))
    failed = [(" ".join(argv[:3])[:40], p.returncode, p.stderr.strip()[-300:]) for argv, p in zip(runs, done)
              if p.returncode != 0]
    assert failed == []
    assert all("terminate called" not in p.stderr for p in done)
    expected = {p.stdout.strip() for p in done[20:]}
    assert len(expected) == 1 and int(expected.pop()) > 0  # every reader saw the same rows
    assert {json.loads(p.stdout.strip().splitlines()[-1])["rows"] for p in done[:20]} == {4}
