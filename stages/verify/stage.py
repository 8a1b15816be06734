"""``lum verify [--ds D]``: check a warehouse and name what is wrong; reads only, never writes.

Findings are rows (table, ds, check, status, detail), status ``ok`` | ``warn`` | ``error`` | ``skipped``:
- every table of ``schemas.TABLES`` that exists: files, schema, keys, finite embeddings (``checks``);
- the model store: versions, their checkpoints, interrupted runs' checkpoints (``models``);
- ``complete``: every day D with ``user_sequences`` has model version ``lum-D``, ``user_knowledge`` and
  ``item_knowledge`` D, and ``dlrm_training`` D where ``dlrm_samples`` has D. A missing one is a WARNING, not
  an error: a day still in progress, or run for some stages only, is incomplete but not wrong
  (``strict=true`` makes warnings fail too).
The summary's ``ok`` is false when any error (or, strict, any warning) was found; ``lum verify`` then exits 2.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import schemas
from stages.core.dates import check_ds
from stages.model import store
from stages.verify.checks import ERROR, OK, SKIPPED, WARN, capped, check_table, finding
from stages.verify.models import check_models
from stages.warehouse.facade import Warehouse

STATUSES = (OK, WARN, ERROR, SKIPPED)


@dataclass(frozen=True)
class Config:
    ds: str | None = None  # check partition ds (and day ds's completeness) only; None: every partition
    deep: bool = False     # also read every column and run schemas.<table>.validate on each record batch
    models: bool = True    # check the model store (loads every version's weights)
    strict: bool = False   # warnings (an incomplete day, a leftover directory) fail the check too


def run(cfg: Config, *, warehouse: Warehouse | str | None) -> dict[str, Any]:
    """Every check; returns {"ok", "counts", "tables", "first_problem", "findings": [row, ...]}."""
    if cfg.ds is not None:
        check_ds(cfg.ds)
    wh = Warehouse.of(warehouse)
    present = [name for name in schemas.TABLES if wh.exists(name)]
    findings: list[dict] = []
    for name in present:
        findings += check_table(wh, name, ds=cfg.ds, deep=cfg.deep)
    if cfg.models:
        findings += check_models(wh, ds=cfg.ds)
    findings += check_days(wh, ds=cfg.ds)
    if not present:
        findings.insert(0, finding("*", cfg.ds, "tables", WARN, f"no tables in warehouse {wh.uri}"))
    counts = Counter(f["status"] for f in findings)
    failing = [f for f in findings if f["status"] == ERROR or (cfg.strict and f["status"] == WARN)]
    first = None
    if failing:
        f = failing[0]
        first = " ".join(x for x in (f["table"], f["ds"], f["check"] + ":", f["detail"]) if x)
    return {"ok": not failing, "counts": {s: counts.get(s, 0) for s in STATUSES}, "tables": len(present),
            "ds": cfg.ds, "first_problem": first, "findings": findings}


def check_days(wh: Warehouse, *, ds: str | None = None) -> list[dict]:
    """The ``complete`` rows: what each day with user_sequences lacks downstream (warnings)."""
    seq_days = wh.partitions("user_sequences")
    days = [d for d in seq_days if ds is None or d == ds]
    if not days:
        detail = f"user_sequences has no partition {ds}" if ds else "no user_sequences partitions"
        return [finding("pipeline", ds, "complete", OK, f"{detail}: no day to check")]
    try:
        versions = set(store.list_versions(wh.uri))
    except ValueError:  # a remote warehouse: the model store is local only
        versions = None
    samples = set(wh.partitions("dlrm_samples"))
    have = {name: set(wh.partitions(name)) for name in ("user_knowledge", "item_knowledge", "dlrm_training")}
    out: list[dict] = []
    if versions is not None:
        out += capped([finding("models/lum", d, "complete", WARN, f"no model version {store.version_name(d)} "
                               "(pretrain has not run for the day)") for d in days
                       if store.version_name(d) not in versions], "models/lum", "complete")
    for name in ("user_knowledge", "item_knowledge"):
        out += capped([finding(name, d, "complete", WARN, "partition missing (infer has not run for the day)")
                       for d in days if d not in have[name]], name, "complete")
    out += capped([finding("dlrm_training", d, "complete", WARN, "partition missing while dlrm_samples has the day "
                           "(join has not run for it)") for d in days if d in samples and d not in have["dlrm_training"]],
                  "dlrm_training", "complete")
    if not out:
        span = days[0] if len(days) == 1 else f"{days[0]}..{days[-1]}"
        out.append(finding("pipeline", span, "complete", OK, f"{len(days)} day(s) with user_sequences have a model "
                           "version, knowledge, and training data where samples exist"))
    return out
