"""Task failure handling of lum_daily: configurable execution_timeout, contract errors (ValueError) fail
without retry (AirflowFailException), transient errors keep their retries."""

from __future__ import annotations

import datetime as dt

import pytest
from airflow.sdk.exceptions import AirflowFailException

from tests.dags.conftest import DAGS

DAY = dt.datetime(1998, 3, 2, tzinfo=dt.UTC)


def _parse(monkeypatch, **env):
    from airflow.dag_processing.dagbag import DagBag

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return DagBag(dag_folder=DAGS)


def test_execution_timeouts_come_from_the_environment(monkeypatch):
    bag = _parse(monkeypatch, LUM_TIMEOUT_PRETRAIN="90m", LUM_TIMEOUT_JOIN="0", LUM_TIMEOUT_INFER="7200")
    assert bag.import_errors == {}
    tasks = {t.task_id: t for t in bag.dags["lum_daily"].tasks}
    assert tasks["pretrain"].execution_timeout == dt.timedelta(minutes=90)
    assert tasks["infer"].execution_timeout == dt.timedelta(hours=2)
    assert tasks["join"].execution_timeout is None  # 0: no timeout
    assert tasks["sequences"].execution_timeout == dt.timedelta(hours=1)  # the default
    bad = _parse(monkeypatch, LUM_TIMEOUT_PRETRAIN="six hours")
    assert "LUM_TIMEOUT_PRETRAIN must be a duration" in "".join(bad.import_errors.values())


@pytest.mark.parametrize("error, raised", [
    (ValueError("dlrm_samples has no partition ds=1998-03-02"), AirflowFailException),  # contract: no retry
    (OSError("connection reset by peer"), OSError),  # transient: Airflow retries it
    (RuntimeError("py4j: Java gateway process exited"), RuntimeError),
])
def test_contract_errors_fail_without_retry_transient_ones_propagate(lum_dag, monkeypatch, error, raised):
    from stages.pipeline import daily

    def failing(ds, warehouse=None, config_path=None, overrides=None):
        assert ds == "1998-03-02"
        raise error

    for stage in ("sequences", "join", "maintain"):
        monkeypatch.setattr(daily, f"run_{stage}", failing)
        with pytest.raises(raised) as info:
            lum_dag.get_task(stage).python_callable(data_interval_start=DAY)
        if raised is AirflowFailException:
            assert f"{stage}: dlrm_samples has no partition" in str(info.value)
            assert isinstance(info.value.__cause__, ValueError)
        else:
            assert info.value is error


def test_dag_run_on_an_empty_warehouse_fails_each_task_once(airflow_db, lum_dag, warehouse, monkeypatch):
    """The real DAG through dag.test: missing inputs are contract errors, so no task is retried."""
    monkeypatch.setenv("LUM_WAREHOUSE", warehouse)
    monkeypatch.delenv("LUM_CONFIG", raising=False)
    run = lum_dag.test(logical_date=DAY + dt.timedelta(days=1))
    states = {ti.task_id: (ti.state, ti.try_number) for ti in run.get_task_instances()}
    assert run.state == "failed"
    assert states["sequences"] == ("failed", 1) and states["join"] == ("failed", 1)  # not up_for_retry
    assert states["pretrain"][0] == states["infer"][0] == states["maintain"][0] == "upstream_failed"
