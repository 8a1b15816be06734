"""The daily task bodies, shared by the Airflow DAG (``dags/lum_daily.py``) and ``lum backfill``.

Each ``run_<stage>(ds, warehouse, config_path, overrides)`` lazily imports ``stages.<stage>``, builds
its ``Config`` from the stage's table in the config file (``[sequences]``, ``[pretrain]`` ...) plus
``overrides``, calls ``run(cfg, ds=ds, warehouse=warehouse)`` and returns its small JSON-able summary
with the stage name and wall seconds added. Nothing heavy is imported at module level, so the DAG
file can import this module inside a task without slowing down parsing.

Overrides: ``{"max_steps": 50}`` goes to every stage whose Config has that field (an error if none
has it); ``{"pretrain.max_steps": 50}`` goes to one stage only.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from stages.core.config import from_mapping, load_config_file
from stages.core.dates import check_ds
from stages.core.settings import resolve_warehouse

log = logging.getLogger(__name__)

STAGES = ("sequences", "pretrain", "infer", "join")


def ds_of(moment: dt.datetime | str | None) -> str:
    """The ``YYYY-MM-DD`` UTC day of a data interval start (a datetime, or a day string)."""
    if moment is None:
        raise ValueError("data_interval_start is None: the run has no data interval (use a dated run)")
    if isinstance(moment, str):
        return check_ds(moment[:10], name="data_interval_start")
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC)
    return moment.date().isoformat()


def _field_names(module: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(module.Config)}


def split_overrides(overrides: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """``{"max_steps": 5, "infer.mode": "naive"}`` -> per-stage dicts; unknown keys raise ValueError."""
    per_stage: dict[str, dict[str, Any]] = {s: {} for s in STAGES}
    for key, value in (overrides or {}).items():
        stage, _, name = key.rpartition(".")
        if stage:
            if stage not in STAGES:
                raise ValueError(f"override {key!r}: unknown stage {stage!r}; known: {', '.join(STAGES)}")
            per_stage[stage][name] = value
            continue
        targets = [s for s in STAGES if name in _field_names(importlib.import_module(f"stages.{s}.stage"))]
        if not targets:
            raise ValueError(f"override {key!r} is not an option of any stage ({', '.join(STAGES)})")
        for s in targets:
            per_stage[s][name] = value
    return per_stage


def stage_config(stage: str, config_path: str | None = None,
                 overrides: Mapping[str, Any] | None = None) -> Any:
    """The frozen ``stages.<stage>.Config`` from the file's ``[stage]`` table plus ``overrides``."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    module = importlib.import_module(f"stages.{stage}.stage")
    mapping = load_config_file(config_path, stage)
    if any(isinstance(v, dict) for v in mapping.values()):
        mapping = {}  # a sectioned file ([pretrain] ...) without a table for this stage: defaults
    mapping.update(split_overrides(overrides)[stage])
    return from_mapping(module.Config, mapping)


def run_stage(stage: str, ds: str, warehouse: str | None = None, config_path: str | None = None,
              overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run one stage for day ``ds``; returns its summary plus ``stage`` and ``seconds``."""
    check_ds(ds, name="ds")
    warehouse = resolve_warehouse(warehouse)
    cfg = stage_config(stage, config_path, overrides)
    module = importlib.import_module(f"stages.{stage}.stage")
    started = time.perf_counter()
    log.info("%s(%s) starting, warehouse %s", stage, ds, warehouse)
    summary = dict(module.run(cfg, ds=ds, warehouse=warehouse) or {})
    seconds = round(time.perf_counter() - started, 3)
    log.info("%s(%s) done in %.1f s", stage, ds, seconds)
    return {"stage": stage, "ds": ds, **summary, "seconds": seconds}


def run_sequences(ds: str, warehouse: str | None = None, config_path: str | None = None,
                  overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """user_sequences(ds) from events with ds <= day."""
    return run_stage("sequences", ds, warehouse, config_path, overrides)


def run_pretrain(ds: str, warehouse: str | None = None, config_path: str | None = None,
                 overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A model version trained through ds (warm start from the one through ds-1)."""
    return run_stage("pretrain", ds, warehouse, config_path, overrides)


def run_infer(ds: str, warehouse: str | None = None, config_path: str | None = None,
              overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """user_knowledge(ds) and item_knowledge(ds)."""
    return run_stage("infer", ds, warehouse, config_path, overrides)


def run_join(ds: str, warehouse: str | None = None, config_path: str | None = None,
             overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """dlrm_training(ds) from dlrm_samples(ds) and the newest knowledge before ds."""
    return run_stage("join", ds, warehouse, config_path, overrides)


RUNNERS = {"sequences": run_sequences, "pretrain": run_pretrain, "infer": run_infer, "join": run_join}
