"""``lum backfill``: the daily DAG's tasks for every day of a range, in date order, without a scheduler.

It calls the task bodies the DAG runs (``stages.pipeline.daily``), so a backfill and scheduled runs produce the
same tables. A stage is complete for day D when its output for D exists (``user_sequences`` D; a model version
through D; both knowledge partitions D; ``dlrm_training`` D, or no ``dlrm_samples`` D; maintenance: every table
that records a maintained day records D or later, ``stages.maintain.stage.is_complete``). A day whose selected
stages are all complete is skipped; otherwise it restarts at its first incomplete stage and reruns every
selected stage after it (later outputs depend on earlier ones). ``force=True`` reruns everything. Consecutive
days that need only ``join`` (and ``maintain``) run as one ``stages.join.range.run_range`` (same rows, fewer
Spark jobs and commits), then each day's maintenance. Days run strictly in order in one process (D needs D-1's
model and knowledge); a failure stops at that day with everything before it committed, so rerunning the same
command resumes. The first day's join needs
the knowledge of the day before the range (a bootstrap, or an earlier run): when it is missing and the join
config does not allow stale knowledge, the backfill fails before running anything. Every stage runs under its
(stage, day) lease (``daily.stage_lease``): two backfills over the same days, or a backfill beside a scheduled
run, fail with one line rather than write a partition twice; a stage that another run completed after this
day was planned (and before this process ran any stage of the day) is skipped, not run again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from stages.core.dates import day_range, days_before
from stages.core.phases import phase
from stages.join import range as join_range
from stages.join.plan import knowledge_days, pick_knowledge_ds, stale_knowledge
from stages.join.stage import check_config
from stages.maintain import stage as maintain
from stages.model import store as model_store
from stages.pipeline import daily
from stages.warehouse.facade import Warehouse

log = logging.getLogger(__name__)


def _has_partition(warehouse: str, table: str, ds: str) -> bool:
    return ds in Warehouse.of(warehouse).partitions(table)


def _model_trained_through(warehouse: str, ds: str) -> bool:
    version = model_store.latest_version(warehouse, through=ds)
    return version is not None and version == model_store.version_name(ds)


def _join_complete(warehouse: str, ds: str) -> bool:
    if _has_partition(warehouse, "dlrm_training", ds):
        return True
    return not _has_partition(warehouse, "dlrm_samples", ds)  # nothing to join that day


COMPLETE: dict[str, Callable[[str, str], bool]] = {
    "sequences": lambda wh, ds: _has_partition(wh, "user_sequences", ds),
    "pretrain": _model_trained_through,
    "infer": lambda wh, ds: _has_partition(wh, "user_knowledge", ds) and _has_partition(wh, "item_knowledge", ds),
    "join": _join_complete,
    "maintain": maintain.is_complete,
}


JOIN_ONLY = (["join"], ["join", "maintain"])  # what a day of a join stretch runs


def stages_to_run(warehouse: str, ds: str, stages: Sequence[str], *, force: bool) -> list[str]:
    """The selected stages that must run for ``ds``: all (force), none (complete) or a suffix."""
    if force:
        return list(stages)
    for i, stage in enumerate(stages):
        if not COMPLETE[stage](warehouse, ds):
            return list(stages[i:])
    return []


def _check_stages(stages: Sequence[str] | None) -> list[str]:
    chosen = list(stages or daily.STAGES)
    unknown = [s for s in chosen if s not in daily.STAGES]
    if unknown:
        raise ValueError(f"--stages: unknown stage {unknown[0]!r}; known: {', '.join(daily.STAGES)}")
    return [s for s in daily.STAGES if s in chosen]  # always in pipeline order


def _run_join_range(start: str, end: str, warehouse: str, config_path: str | None,
                    overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """``join_range.run_range`` over ``start..end`` with the join Config the per-day runner would build."""
    cfg = daily.stage_config("join", config_path, overrides)
    with daily.stage_lease("join", day_range(start, end), warehouse, cfg), phase("stage", f"join {start}..{end}"):
        return join_range.run_range(cfg, start=start, end=end, warehouse=warehouse)


def _join_stretch(warehouse: str, days: Sequence[str], first: int, chosen: Sequence[str], *,
                  force: bool) -> list[str]:
    """Days from ``days[first]`` on whose stages to run are those of the first, ``["join"]`` or ``["join",
    "maintain"]`` (consecutive, maximal). Looking ahead is safe: a join writes only dlrm_training, which no
    other stage's completeness reads.
    """
    stretch: list[str] = []
    todo = stages_to_run(warehouse, days[first], chosen, force=force)
    for ds in days[first:]:
        if todo not in JOIN_ONLY or stages_to_run(warehouse, ds, chosen, force=force) != todo:
            break
        stretch.append(ds)
    return stretch


def _check_knowledge_before(warehouse: str, days: Sequence[str], chosen: Sequence[str], config_path: str | None,
                            overrides: Mapping[str, Any] | None, *, force: bool) -> None:
    """``ValueError`` before anything runs when a day whose join needs knowledge from before the range (the
    first ``lag`` days) will not find it and the join config does not allow stale knowledge."""
    if "join" not in chosen:
        return
    cfg = daily.stage_config("join", config_path, overrides)
    spec, lag = check_config(cfg)
    if cfg.allow_stale_knowledge:
        return
    wh = Warehouse.of(warehouse)
    user_days, item_days = knowledge_days(wh)
    for ds in days[:lag]:
        if not _has_partition(warehouse, spec.samples_table, ds) or "join" not in stages_to_run(
                warehouse, ds, chosen, force=force):
            continue
        k_ds, _ = pick_knowledge_ds(user_days, item_days, days_before(ds, lag))
        problem = stale_knowledge(ds, lag, k_ds, user_days, item_days)
        if problem:
            raise ValueError(f"{problem}; bootstrap it first with `lum backfill --start {days_before(ds, lag)} "
                             f"--end {days_before(ds, lag)} --stages sequences pretrain infer`")


def run_backfill(*, start: str, end: str, stages: Sequence[str] | None = None, force: bool = False,
                 config_path: str | None = None, overrides: Mapping[str, Any] | None = None,
                 warehouse: str) -> dict[str, Any]:
    """Run ``stages`` for each day ``start..end`` (inclusive) in order; returns a small summary.

    Summary: ``days`` (number in range), ``ran`` / ``skipped`` (lists of days), ``stage_runs``, ``seconds``,
    ``runs`` (per day: the stages run and their seconds) and ``join_ranges`` (per stretch of >= 2 consecutive
    join-only days, joined by ONE ``run_range``: start, end, days, seconds; its days' ``runs`` entries share
    the stretch's seconds evenly). A day that runs other stages too is joined by the per-day runner.
    """
    days = day_range(start, end)
    chosen = _check_stages(stages)
    daily.split_overrides(overrides)  # fail on a bad override before any day runs
    _check_knowledge_before(warehouse, days, chosen, config_path, overrides, force=force)
    started = time.perf_counter()
    ran: list[str] = []
    skipped: list[str] = []
    runs: list[dict[str, Any]] = []
    ranges: list[dict[str, Any]] = []
    n = 0
    while n < len(days):
        ds = days[n]
        todo = stages_to_run(warehouse, ds, chosen, force=force)
        if not todo:
            log.info("backfill %s (%d/%d): complete, skipped", ds, n + 1, len(days))
            skipped.append(ds)
            n += 1
            continue
        stretch = _join_stretch(warehouse, days, n, chosen, force=force) if todo in JOIN_ONLY else []
        if len(stretch) >= 2:
            log.info("backfill %s..%s (%d-%d/%d): join range of %d days", stretch[0], stretch[-1], n + 1,
                     n + len(stretch), len(days), len(stretch))
            summary = _run_join_range(stretch[0], stretch[-1], warehouse, config_path, overrides)
            share = round(summary["seconds"] / len(stretch), 3)
            ran.extend(stretch)
            for d in stretch:  # then each day's maintenance, in order
                seconds = {"join": share}
                if "maintain" in todo:
                    seconds["maintain"] = daily.RUNNERS["maintain"](d, warehouse, config_path, overrides)["seconds"]
                runs.append({"ds": d, "seconds": seconds})
            ranges.append({"start": stretch[0], "end": stretch[-1], "days": len(stretch),
                           "seconds": summary["seconds"]})
            n += len(stretch)
            continue
        log.info("backfill %s (%d/%d): running %s", ds, n + 1, len(days), ", ".join(todo))
        seconds: dict[str, float] = {}
        for stage in todo:
            if not force and not seconds and COMPLETE[stage](warehouse, ds):
                log.info("backfill %s: %s was completed by another run meanwhile; skipped", ds, stage)
                continue
            summary = daily.RUNNERS[stage](ds, warehouse, config_path, overrides)
            seconds[stage] = summary["seconds"]
        if seconds:
            ran.append(ds)
            runs.append({"ds": ds, "seconds": seconds})
        else:
            skipped.append(ds)
        n += 1
    return {"start": start, "end": end, "days": len(days), "ran": ran, "skipped": skipped,
            "stage_runs": sum(len(r["seconds"]) for r in runs), "runs": runs, "join_ranges": ranges,
            "seconds": round(time.perf_counter() - started, 3)}
