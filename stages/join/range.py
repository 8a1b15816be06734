"""``run_range``: the join of every day in ``start..end``, one Spark job and ONE commit per knowledge group.

Each day gets exactly ``run()``'s knowledge partition (``stages.join.plan``); consecutive days with the same
choice form a group, whose samples are read once, joined by ``stage.join_days`` (the same frame and per-day
checks as ``run()``) and written by one ``Warehouse.write_arrow_days`` commit of exactly its days. Same rows as
``run()`` for every day; the fixed per-day cost (check jobs, knowledge checks, the commit) is paid per group.
Days without a samples partition are skipped and listed in ``days_without_samples`` (their output is left as
it is); a range with none at all is a ``ValueError``. The knowledge rule (every day needs D - lag's knowledge
unless ``allow_stale_knowledge``) and ``require_knowledge`` are checked for every day before any write. A bad
day or bad knowledge raises ``ValueError`` naming it; that group and later ones are left as they were, earlier
groups stay committed, so rerunning the range finishes it with the same rows. Input versions are pinned once
for the whole range; each group's commit records them with its days (stages.join.provenance).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from stages.core.dates import day_range
from stages.join.inputs import sample_rows_by_day
from stages.join.plan import Group, knowledge_days, knowledge_lag, plan_groups, stale_knowledge
from stages.join.provenance import pin_inputs
from stages.join.stage import Config, Prepared, check_config, commit_metadata, join_days, output_metadata, prepare
from stages.warehouse.facade import Warehouse

log = logging.getLogger(__name__)


def _run_group(cfg: Config, prep: Prepared, group: Group) -> dict[str, Any]:
    """Join and write one group; returns its summary."""
    started = time.perf_counter()
    spec, wh = prep.spec, prep.wh
    first, last = group.days[0], group.days[-1]
    samples_version = prep.versions[spec.samples_table]
    samples = wh.read_spark(prep.spark, spec.samples_table, start=first, end=last, version=samples_version)
    expected = sample_rows_by_day(wh, spec, list(group.days), samples, samples_version)
    if group.knowledge_ds is None:
        log.warning("no knowledge partition <= %s - %d: writing %s[%s..%s] with null LUM columns", last,
                    prep.lag, spec.output_table, first, last)
    elif group.fallback == "common_partition":
        log.warning("%s..%s: user_knowledge and item_knowledge newest partitions differ; using %s, the "
                    "newest both have", first, last, group.knowledge_ds)
    joined = join_days(cfg, prep, samples, expected, group.knowledge_ds)
    version = joined.model_version
    try:
        written = wh.write_arrow_days(spec.output_table, joined.rows, joined.batches, days=group.days,
                                      metadata=output_metadata(spec, prep.conditions),
                                      commit_metadata=commit_metadata(prep, list(group.days), group.knowledge_ds,
                                                                      group.fallback, version),
                                      check=joined.check, keyed=joined.batches is not None)
    finally:
        joined.release()
    without = joined.check.without
    rows = sum(expected.values())
    return {"start": first, "end": last, "days": len(group.days), "knowledge_ds": group.knowledge_ds,
            "max_knowledge_lag_days": knowledge_lag(last, group.knowledge_ds),
            "fallback": group.fallback, "model_version": version, "rows": rows,
            "rows_without_knowledge": sum(without.values()), "version": written,
            "seconds": round(time.perf_counter() - started, 3)}


def _check_knowledge_rule(cfg: Config, groups: list[Group], lag: int, user_days: list[str],
                          item_days: list[str]) -> None:
    """``ValueError`` for the first day without D - lag's knowledge (strict); with ``allow_stale_knowledge``,
    one warning per group that has such days."""
    for group in groups:
        stale = [(d, p) for d in group.days if (p := stale_knowledge(d, lag, group.knowledge_ds, user_days,
                                                                      item_days))]
        if stale and not cfg.allow_stale_knowledge:
            raise ValueError(stale[0][1])
        if stale:
            log.warning("%s..%s: %d day(s) without the knowledge of D - %d (first: %s); allow_stale_knowledge is "
                        "set: using %s", group.days[0], group.days[-1], len(stale), lag, stale[0][0],
                        group.knowledge_ds or "no knowledge")


def run_range(cfg: Config, *, start: str, end: str, warehouse: Warehouse | str) -> dict[str, Any]:
    """Write every day of ``start..end`` (inclusive) of the spec's output table, as ``run`` would.

    Returns a JSON-able summary: ``days`` (days written), ``days_without_samples``, ``rows``,
    ``rows_without_knowledge``, ``max_knowledge_lag_days``, ``groups`` (per group: start, end, days,
    knowledge_ds, max_knowledge_lag_days, fallback, model_version, rows, rows_without_knowledge, version,
    seconds), ``seconds``, ``rows_per_s``.
    """
    wh = Warehouse.of(warehouse)
    days = day_range(start, end)
    spec, lag = check_config(cfg)
    started = time.perf_counter()
    versions = pin_inputs(wh, spec)
    samples_version = versions[spec.samples_table]
    have = set(wh.partitions(spec.samples_table, samples_version)) if samples_version is not None else set()
    present = [d for d in days if d in have]
    missing = [d for d in days if d not in have]
    if not present:
        raise ValueError(f"{spec.samples_table} has no partition in {start}..{end}")
    if missing:
        log.warning("%s has no partition for %d day(s) of %s..%s (first %s): skipped, nothing to join",
                    spec.samples_table, len(missing), start, end, missing[0])
    user_days, item_days = knowledge_days(wh, versions)
    groups = plan_groups(present, user_days, item_days, lag)
    _check_knowledge_rule(cfg, groups, lag, user_days, item_days)
    if cfg.require_knowledge:
        for group in groups:
            if group.knowledge_ds is None:
                raise ValueError(f"no user_knowledge/item_knowledge partition <= {group.days[0]} - lag {lag} "
                                 f"(ds {group.days[0]}) and require_knowledge is set")
    prep = prepare(cfg, spec, lag, wh, versions)
    results: list[dict[str, Any]] = []
    for n, group in enumerate(groups, 1):
        results.append(_run_group(cfg, prep, group))
        elapsed = time.perf_counter() - started
        done_days = sum(r["days"] for r in results)
        eta = elapsed / done_days * (len(present) - done_days)
        log.info("join range group %d/%d %s..%s: %d rows, knowledge %s, %.1f s; %d/%d days, %.0f rows/s, "
                 "ETA %.0f s", n, len(groups), group.days[0], group.days[-1], results[-1]["rows"],
                 group.knowledge_ds, results[-1]["seconds"], done_days, len(present),
                 sum(r["rows"] for r in results) / max(elapsed, 1e-9), eta)
    seconds = time.perf_counter() - started
    rows = sum(r["rows"] for r in results)
    lags = [r["max_knowledge_lag_days"] for r in results if r["max_knowledge_lag_days"] is not None]
    return {"table": spec.output_table, "start": start, "end": end, "days": len(present),
            "days_without_samples": missing, "rows": rows, "max_knowledge_lag_days": max(lags, default=None),
            "rows_without_knowledge": sum(r["rows_without_knowledge"] for r in results),
            "groups": results, "conditions": len(prep.conditions), "spec": spec.name, "lag_days": lag,
            "seconds": round(seconds, 3), "rows_per_s": round(rows / max(seconds, 1e-9), 1)}
