"""
# lum_daily: the daily Large User Model pipeline

For each UTC day **D**, once D is complete: `sequences(D) -> pretrain(D) -> infer(D)`, and `join(D)`
alongside (it reads the knowledge of the newest day before D, never today's); then `maintain(D)` once both
are done (day D's partitions compacted, user_knowledge and dlrm_training sorted by user, old partitions
expired where configured, vacuum, checkpoints; it changes no row).

- Schedule `CronDataIntervalTimetable("0 0 * * *", UTC)`: every task takes `ds` from the **data interval
  start**, so a scheduled run or a manual trigger only ever processes a complete day.
- `max_active_runs=1`, `catchup=False`: days run one at a time, in date order; history is loaded by a backfill
  (`airflow backfill create ... --max-active-runs 1`, or `lum backfill` without a scheduler).
- `pretrain` and `infer` use the pool `lum_gpu`; every task replaces exactly its own partition, so retries are safe.
- Every task has an `execution_timeout` (sequences 1h, pretrain 6h, infer 4h, join 2h, maintain 2h;
  `$LUM_TIMEOUT_<TASK>`, e.g. `LUM_TIMEOUT_PRETRAIN=8h`, `0` for none), so a hung task cannot hold the
  `lum_gpu` pool for good.
- A contract error (a `ValueError`: bad input, missing partition or knowledge, schema or key violation) fails
  the task at once (`AirflowFailException`, no retry); other errors (OSError, Spark/py4j, ...) are retried.
- Settings are read when a task runs: Variable `lum_warehouse` / `lum_config`, else `$LUM_WAREHOUSE` / `$LUM_CONFIG`.
  Storage credentials are masked in the task logs and summaries.

Details (timetable choice, late data, schedule bounds, assets, backfill): docs/orchestration.md.
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import Asset, CronDataIntervalTimetable, Variable, dag, task
from airflow.sdk.exceptions import AirflowFailException

# Logical table URIs: stable across deployments, whatever warehouse URI the tasks resolve at run time.
EVENTS = Asset(uri="lum://warehouse/events", name="lum_events")
USER_SEQUENCES = Asset(uri="lum://warehouse/user_sequences", name="lum_user_sequences")
LUM_MODEL = Asset(uri="lum://warehouse/models/lum", name="lum_model")
USER_KNOWLEDGE = Asset(uri="lum://warehouse/user_knowledge", name="lum_user_knowledge")
ITEM_KNOWLEDGE = Asset(uri="lum://warehouse/item_knowledge", name="lum_item_knowledge")
DLRM_SAMPLES = Asset(uri="lum://warehouse/dlrm_samples", name="lum_dlrm_samples")
DLRM_TRAINING = Asset(uri="lum://warehouse/dlrm_training", name="lum_dlrm_training")

GPU_POOL = "lum_gpu"

# execution_timeout per task; `LUM_TIMEOUT_<TASK>` overrides (read when the DAG file is parsed, so set it
# for the dag processor and the workers alike; a Variable would cost a metadata round trip per parse).
TIMEOUTS = {"sequences": "1h", "pretrain": "6h", "infer": "4h", "join": "2h", "maintain": "2h"}
_UNITS = {"s": 1, "m": 60, "h": 3600}


def _day(env: str, default: str | None) -> dt.datetime | None:
    value = os.environ.get(env) or default
    if value is None:
        return None
    return dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)


def _timeout(task_id: str) -> dt.timedelta | None:
    """The task's execution_timeout: `$LUM_TIMEOUT_<TASK>` (`90m`, `6h`, `3600s` or seconds; 0: none), else TIMEOUTS."""
    env = f"LUM_TIMEOUT_{task_id.upper()}"
    raw = (os.environ.get(env) or TIMEOUTS[task_id]).strip().lower()
    number, unit = (raw[:-1], raw[-1]) if raw and raw[-1] in _UNITS else (raw, "s")
    try:
        seconds = float(number) * _UNITS[unit]
    except ValueError:
        raise ValueError(f"{env} must be a duration like 90m, 6h or 3600s (0: no timeout), got {raw!r}") from None
    if seconds < 0:
        raise ValueError(f"{env} must be >= 0, got {raw!r}")
    return dt.timedelta(seconds=seconds) if seconds else None


def _settings() -> dict:
    """Warehouse and config path, resolved when the task runs (Variable, then env)."""
    return {
        "warehouse": Variable.get("lum_warehouse", default=None) or os.environ.get("LUM_WAREHOUSE"),
        "config_path": Variable.get("lum_config", default=None) or os.environ.get("LUM_CONFIG"),
    }


def _run(stage: str, data_interval_start) -> dict:
    """``daily.run_<stage>`` for the run's day. A ValueError (a contract error: bad input, missing partition or
    knowledge, schema or key violation) fails the task without retry; any other error keeps its retries."""
    from airflow.sdk.log import mask_secret  # deferred: needed only when a task runs

    from stages.core.redact import redact, secret_values  # deferred: the DAG file is parsed often
    from stages.pipeline import daily  # deferred: the DAG file is parsed often; stages load in the task

    for secret in secret_values():  # Airflow's masker then hides them in this task's log, tracebacks included
        mask_secret(secret)
    try:
        return getattr(daily, f"run_{stage}")(daily.ds_of(data_interval_start), **_settings())
    except ValueError as exc:
        raise AirflowFailException(f"{stage}: {redact(exc)} (a contract error: not retried)") from exc


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
    @task(inlets=[EVENTS], outlets=[USER_SEQUENCES], execution_timeout=_timeout("sequences"))
    def sequences(data_interval_start=None) -> dict:
        """user_sequences(D): each user's last max_len behaviours with ts < end of D."""
        return _run("sequences", data_interval_start)

    @task(outlets=[LUM_MODEL], pool=GPU_POOL, pool_slots=1, execution_timeout=_timeout("pretrain"))
    def pretrain(data_interval_start=None) -> dict:
        """Warm-start from the model trained through D-1; the new version is trained through D."""
        return _run("pretrain", data_interval_start)

    @task(outlets=[USER_KNOWLEDGE, ITEM_KNOWLEDGE], pool=GPU_POOL, pool_slots=1, execution_timeout=_timeout("infer"))
    def infer(data_interval_start=None) -> dict:
        """user_knowledge(D) and item_knowledge(D) with the newest model trained through D."""
        return _run("infer", data_interval_start)

    @task(inlets=[DLRM_SAMPLES], outlets=[DLRM_TRAINING], execution_timeout=_timeout("join"))
    def join(data_interval_start=None) -> dict:
        """dlrm_training(D): samples of D with the knowledge of D-1 (older only if the join config allows it)."""
        return _run("join", data_interval_start)

    @task(execution_timeout=_timeout("maintain"))
    def maintain(data_interval_start=None) -> dict:
        """Day D's partitions compacted or clustered by user, old partitions expired, vacuum, checkpoints."""
        return _run("maintain", data_interval_start)

    # join(D) reads the knowledge written by D-1's run (max_active_runs=1 guarantees it is done),
    # so it does not wait for today's inference (the daily semantics in the README). maintain(D) rewrites
    # files of both outputs, so it waits for both, and join(D+1) pins knowledge files that stay.
    knowledge = sequences() >> pretrain() >> infer()
    [knowledge, join()] >> maintain()


lum_daily()
