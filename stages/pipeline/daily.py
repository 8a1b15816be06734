"""The daily task bodies, shared by the Airflow DAG (``dags/lum_daily.py``) and ``lum backfill``.

Each ``run_<stage>(ds, warehouse, config_path, overrides)`` builds the stage's ``Config`` through the
registry (the stage's table in the config file, then ``overrides``), runs it and returns its small JSON-able
summary with the stage name and wall seconds added. The DAG imports this module inside its tasks only.

Overrides: ``{"max_steps": 50}`` goes to every stage whose Config has that field (an error if none
has it); ``{"pretrain.max_steps": 50}`` goes to one stage only.

Errors: a ``ValueError`` is a contract error (bad input, missing partition or knowledge, schema or key
violation) that a retry cannot fix; the DAG fails such a task without retrying it. Anything else (OSError,
Spark/py4j errors) may be transient and keeps its retries. Log records and summaries are redacted
(stages.core.redact): a task's summary goes to Airflow's XCom and its logs to the task log.
A stage runs under the lease of (stage, ds) (``stage_lease``, ``stages.warehouse.lease``): a second run of the
same stage and day, a task beside a manual ``lum run`` or two backfills, fails with one line naming the
holder instead of mixing its rows with the first run's.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stages.core.dates import check_ds
from stages.core.phases import phase
from stages.core.redact import install_log_redaction, redact_obj
from stages.pipeline import registry
from stages.warehouse import lease
from stages.warehouse.facade import Warehouse

log = logging.getLogger(__name__)

STAGES = registry.names(registry.DAILY)


def ds_of(moment: dt.datetime | str | None) -> str:
    """The ``YYYY-MM-DD`` UTC day of a data interval start (a datetime, or a day string)."""
    if moment is None:
        raise ValueError("data_interval_start is None: the run has no data interval (use a dated run)")
    if isinstance(moment, str):
        return check_ds(moment[:10], name="data_interval_start")
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC)
    return moment.date().isoformat()


def split_overrides(overrides: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """``{"max_steps": 5, "infer.mode": "naive"}`` -> per-stage dicts; unknown keys raise ValueError."""
    return registry.route_overrides(STAGES, overrides)


def stage_config(stage: str, config_path: str | None = None,
                 overrides: Mapping[str, Any] | None = None) -> Any:
    """The frozen Config of daily ``stage`` from the file's ``[stage]`` table plus ``overrides``."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    return registry.build_config(stage, config_path=config_path, overrides=overrides, scope=STAGES)


@contextmanager
def stage_lease(stage: str, days: Sequence[str], warehouse: Warehouse | str, cfg: Any = None) -> Iterator[list[Path]]:
    """Hold the leases of ``stage`` for ``days`` while the block runs (``LeaseHeld`` when another run has one).

    A sharded infer process (``shard="i/n"``) stages invisible files only and takes none (its ``commit/n``
    does); the ranks of one torchrun job share the lease."""
    shard = getattr(cfg, "shard", None)
    if shard and not str(shard).startswith("commit/"):
        yield []
        return
    job = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: its run id ("none" unless set) and rendezvous port
        job = "{}@{}:{}".format(*(os.environ.get(k, "") for k in (lease.JOB_ENV, "MASTER_ADDR", "MASTER_PORT")))
    with lease.hold(warehouse, stage, days, job=job) as paths:
        yield paths


def run_stage(stage: str, ds: str, warehouse: Warehouse | str | None = None, config_path: str | None = None,
              overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run one stage for day ``ds`` under its lease; returns its summary (redacted) plus ``stage`` and
    ``seconds``."""
    install_log_redaction()
    check_ds(ds, name="ds")
    warehouse = Warehouse.of(warehouse)
    cfg = stage_config(stage, config_path, overrides)
    started = time.perf_counter()
    log.info("%s(%s) starting, warehouse %s", stage, ds, warehouse.uri)
    with stage_lease(stage, [ds], warehouse, cfg), phase("stage", f"{stage} {ds}"):
        summary = registry.run(stage, cfg, ds=ds, warehouse=warehouse)
    seconds = round(time.perf_counter() - started, 3)
    log.info("%s(%s) done in %.1f s", stage, ds, seconds)
    return redact_obj({"stage": stage, "ds": ds, **summary, "seconds": seconds})


def run_sequences(ds: str, warehouse: Warehouse | str | None = None, config_path: str | None = None,
                  overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """user_sequences(ds) from events with ds <= day."""
    return run_stage("sequences", ds, warehouse, config_path, overrides)


def run_pretrain(ds: str, warehouse: Warehouse | str | None = None, config_path: str | None = None,
                 overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A model version trained through ds (warm start from the one through ds-1)."""
    return run_stage("pretrain", ds, warehouse, config_path, overrides)


def run_infer(ds: str, warehouse: Warehouse | str | None = None, config_path: str | None = None,
              overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """user_knowledge(ds) and item_knowledge(ds)."""
    return run_stage("infer", ds, warehouse, config_path, overrides)


def run_join(ds: str, warehouse: Warehouse | str | None = None, config_path: str | None = None,
             overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """dlrm_training(ds) from dlrm_samples(ds) and the newest knowledge before ds."""
    return run_stage("join", ds, warehouse, config_path, overrides)


def run_maintain(ds: str, warehouse: Warehouse | str | None = None, config_path: str | None = None,
                 overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Day D's partitions compacted or clustered by user, old partitions expired, vacuum, checkpoints."""
    return run_stage("maintain", ds, warehouse, config_path, overrides)


RUNNERS = {"sequences": run_sequences, "pretrain": run_pretrain, "infer": run_infer, "join": run_join,
           "maintain": run_maintain}
