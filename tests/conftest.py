"""Shared fixtures. Environment first: Triton's interpreter and Airflow's home must be set before
anything imports triton or airflow."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="lum-airflow-")
atexit.register(shutil.rmtree, _AIRFLOW_HOME, True)  # the test session's Airflow DB and logs
os.environ.setdefault("AIRFLOW_HOME", _AIRFLOW_HOME)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(Path(__file__).resolve().parents[1] / "dags"))
os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{_AIRFLOW_HOME}/airflow.db")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.pop("LUM_WAREHOUSE", None)

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def spark():
    """One local[2] Spark session for the whole test session (start-up costs 4-10 s)."""
    from stages.core.spark import get_spark, stop_spark

    session = get_spark()
    yield session
    stop_spark()


@pytest.fixture
def warehouse(tmp_path) -> str:
    """An empty warehouse directory for one test."""
    path = tmp_path / "warehouse"
    path.mkdir()
    return str(path)


@pytest.fixture(scope="session")
def ml100k_warehouse(tmp_path_factory) -> str:
    """A warehouse with MovieLens-100K ingested once per session. Read-only: copy it before writing."""
    from stages.pipeline.registry import ingest as run_source

    path = tmp_path_factory.mktemp("ml100k") / "warehouse"
    run_source("movielens-100k", {}, warehouse=str(path))
    return str(path)


@pytest.fixture
def copy_warehouse(tmp_path):
    """``copy_warehouse(src) -> str``: a private, writable copy of a session warehouse."""

    def _copy(src: str) -> str:
        dst = tmp_path / f"wh-copy-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(src, dst)
        return str(dst)

    return _copy


def tree_snapshot(root: str) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes: compare two snapshots to prove nothing changed."""
    out: dict[str, bytes] = {}
    base = Path(root)
    if not base.exists():
        return out
    for p in sorted(base.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(base))] = p.read_bytes()
    return out
