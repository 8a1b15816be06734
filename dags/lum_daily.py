"""
# lum_daily: the daily Large User Model pipeline

For each UTC day **D**, once D is complete: `sequences(D) -> pretrain(D) -> infer(D)`, and `join(D)`
alongside (it reads the knowledge of the newest day before D, never today's).

- Schedule `CronDataIntervalTimetable("0 0 * * *", UTC)`: every task takes `ds` from the **data interval
  start**, so a scheduled run or a manual trigger only ever processes a complete day.
- `max_active_runs=1`, `catchup=False`: days run one at a time, in date order; history is loaded by a backfill
  (`airflow backfill create ... --max-active-runs 1`, or `lum backfill` without a scheduler).
- `pretrain` and `infer` use the pool `lum_gpu`; every task replaces exactly its own partition, so retries are safe.
- Settings are read when a task runs: Variable `lum_warehouse` / `lum_config`, else `$LUM_WAREHOUSE` / `$LUM_CONFIG`.

Details (timetable choice, late data, schedule bounds, assets, backfill): docs/orchestration.md.
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import Asset, CronDataIntervalTimetable, Variable, dag, task

# Logical table URIs: stable across deployments, whatever warehouse URI the tasks resolve at run time.
EVENTS = Asset(uri="lum://warehouse/events", name="lum_events")
USER_SEQUENCES = Asset(uri="lum://warehouse/user_sequences", name="lum_user_sequences")
LUM_MODEL = Asset(uri="lum://warehouse/models/lum", name="lum_model")
USER_KNOWLEDGE = Asset(uri="lum://warehouse/user_knowledge", name="lum_user_knowledge")
ITEM_KNOWLEDGE = Asset(uri="lum://warehouse/item_knowledge", name="lum_item_knowledge")
DLRM_SAMPLES = Asset(uri="lum://warehouse/dlrm_samples", name="lum_dlrm_samples")
DLRM_TRAINING = Asset(uri="lum://warehouse/dlrm_training", name="lum_dlrm_training")

GPU_POOL = "lum_gpu"


def _day(env: str, default: str | None) -> dt.datetime | None:
    value = os.environ.get(env) or default
    if value is None:
        return None
    return dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)


def _settings() -> dict:
    """Warehouse and config path, resolved when the task runs (Variable, then env)."""
    return {
        "warehouse": Variable.get("lum_warehouse", default=None) or os.environ.get("LUM_WAREHOUSE"),
        "config_path": Variable.get("lum_config", default=None) or os.environ.get("LUM_CONFIG"),
    }


@dag(
    dag_id="lum_daily",
    doc_md=__doc__,
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=_day("LUM_DAG_START_DATE", "1995-01-01"),
    end_date=_day("LUM_DAG_END_DATE", None),
    catchup=False,
    max_active_runs=1,
    tags=["lum", "recsys", "daily"],
    default_args={
        "owner": "lum",
        "retries": 2,
        "retry_delay": dt.timedelta(minutes=2),
        "retry_exponential_backoff": True,
        "max_retry_delay": dt.timedelta(minutes=30),
    },
)
def lum_daily():
    @task(inlets=[EVENTS], outlets=[USER_SEQUENCES])
    def sequences(data_interval_start=None) -> dict:
        """user_sequences(D): each user's last max_len behaviours with ts < end of D."""
        from stages.pipeline import daily  # deferred: the DAG file is parsed often; stages load in the task

        return daily.run_sequences(daily.ds_of(data_interval_start), **_settings())

    @task(outlets=[LUM_MODEL], pool=GPU_POOL, pool_slots=1)
    def pretrain(data_interval_start=None) -> dict:
        """Warm-start from the model trained through D-1; the new version is trained through D."""
        from stages.pipeline import daily  # deferred: the DAG file is parsed often; stages load in the task

        return daily.run_pretrain(daily.ds_of(data_interval_start), **_settings())

    @task(outlets=[USER_KNOWLEDGE, ITEM_KNOWLEDGE], pool=GPU_POOL, pool_slots=1)
    def infer(data_interval_start=None) -> dict:
        """user_knowledge(D) and item_knowledge(D) with the newest model trained through D."""
        from stages.pipeline import daily  # deferred: the DAG file is parsed often; stages load in the task

        return daily.run_infer(daily.ds_of(data_interval_start), **_settings())

    @task(inlets=[DLRM_SAMPLES], outlets=[DLRM_TRAINING])
    def join(data_interval_start=None) -> dict:
        """dlrm_training(D): samples of D with the newest knowledge strictly before D."""
        from stages.pipeline import daily  # deferred: the DAG file is parsed often; stages load in the task

        return daily.run_join(daily.ds_of(data_interval_start), **_settings())

    # join(D) reads the knowledge written by D-1's run (max_active_runs=1 guarantees it is done),
    # so it does not wait for today's inference (the daily semantics in the README).
    sequences() >> pretrain() >> infer()
    join()


lum_daily()
