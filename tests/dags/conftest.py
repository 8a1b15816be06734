"""Airflow fixtures: a migrated metadata DB (temporary SQLite from tests/conftest.py) and the tiny config."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_CONFIG = str(Path(__file__).with_name("tiny.toml"))
DAGS = str(Path(__file__).resolve().parents[2] / "dags")


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """Create the metadata tables once (~1-3 s); dag.test needs them."""
    from airflow.utils import db

    db.resetdb()


@pytest.fixture(scope="session")
def lum_dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=DAGS)
    assert not bag.import_errors, bag.import_errors
    return bag.dags["lum_daily"]
