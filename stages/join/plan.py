"""Which knowledge partition serves day D: the point-in-time rule of the join.

Day D needs the knowledge of exactly D - lag (lag >= 1, so strictly before D; normally D-1, written by the
previous day's run) in BOTH user_knowledge and item_knowledge; ``stale_knowledge`` names what is missing,
and the join refuses the day unless its config allows stale knowledge (``allow_stale_knowledge``). Then K
is the newest ds <= D - lag present in both tables: when the two tables' newest partitions <= D - lag
differ, the newest day both have is used (fallback ``"common_partition"``); when there is none, the day has
no knowledge (fallback ``"no_knowledge"``: null LUM columns). ``knowledge_lag`` = D - K in days. A range of
days is split into runs of consecutive days with the same choice (``plan_groups``), one Spark job each.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from stages.core.dates import days_before, parse_ds
from stages.warehouse.facade import Warehouse

log = logging.getLogger(__name__)


def knowledge_days(wh: Warehouse, versions: Mapping[str, int | None] | None = None) -> tuple[list[str], list[str]]:
    """(user_knowledge days, item_knowledge days), sorted, at the pinned ``versions`` (a table missing from
    ``versions`` is read at its latest version); [] for a missing table or a version pinned as None."""
    def days(name: str) -> list[str]:
        if versions is not None and name in versions:
            return [] if versions[name] is None else wh.partitions(name, versions[name])
        return wh.partitions(name) if wh.exists(name) else []

    return days("user_knowledge"), days("item_knowledge")


def pick_knowledge_ds(user_days: list[str], item_days: list[str],
                      cutoff: str) -> tuple[str | None, str | None]:
    """(knowledge ds, fallback) for the newest user+item knowledge partition <= ``cutoff`` (pure).

    fallback is None (both tables' newest partitions agree), ``"common_partition"`` (they differ: the
    newest day both have) or ``"no_knowledge"`` (nothing usable).
    """
    users = [d for d in user_days if d <= cutoff]
    items = [d for d in item_days if d <= cutoff]
    if not users or not items:
        return None, "no_knowledge"
    if users[-1] == items[-1]:
        return users[-1], None
    common = sorted(set(users) & set(items))
    if not common:
        return None, "no_knowledge"
    return common[-1], "common_partition"


def knowledge_lag(ds: str, k_ds: str | None) -> int | None:
    """Days from knowledge day ``k_ds`` to sample day ``ds`` (None without knowledge)."""
    return None if k_ds is None else (parse_ds(ds) - parse_ds(k_ds)).days


def stale_knowledge(ds: str, lag: int, k_ds: str | None, user_days: list[str], item_days: list[str]) -> str | None:
    """None when day ``ds`` gets the knowledge of exactly ``ds - lag``; else a message naming what is missing."""
    expected = days_before(ds, lag)
    if k_ds == expected:
        return None
    missing = [name for name, days in (("user_knowledge", user_days), ("item_knowledge", item_days))
               if expected not in days]
    instead = f"the knowledge of {k_ds}" if k_ds else "no knowledge at all (null LUM columns)"
    return (f"join {ds} needs the knowledge of {expected} (ds - lag {lag}), which {' and '.join(missing)} "
            f"{'do' if len(missing) > 1 else 'does'} not have (did the run for {expected} fail? run infer for "
            f"{expected} first); join.allow_stale_knowledge = true would use {instead}")


def resolve_knowledge(wh: Warehouse, ds: str, lag: int, *, allow_stale: bool,
                      versions: Mapping[str, int | None] | None = None) -> tuple[str | None, str | None]:
    """(knowledge ds, fallback) for day ``ds`` at the pinned ``versions``: exactly ``ds - lag``, else
    ``ValueError`` naming the missing day; with ``allow_stale`` the newest older partition (or none), logged."""
    user_days, item_days = knowledge_days(wh, versions)
    k_ds, fallback = pick_knowledge_ds(user_days, item_days, days_before(ds, lag))
    problem = stale_knowledge(ds, lag, k_ds, user_days, item_days)
    if problem and not allow_stale:
        raise ValueError(problem)
    if problem:
        log.warning("%s; allow_stale_knowledge is set: using %s (knowledge lag %s days, fallback %s)", problem,
                    k_ds or "no knowledge", knowledge_lag(ds, k_ds), fallback)
    return k_ds, fallback


def choose_knowledge_ds(wh: Warehouse, cutoff: str,
                        versions: Mapping[str, int | None] | None = None) -> tuple[str | None, str | None]:
    """``pick_knowledge_ds`` on the knowledge partitions (at ``versions``), without the staleness rule: what a
    recorded join used, for ``--reproduce``; logs the common-partition fallback."""
    user_days, item_days = knowledge_days(wh, versions)
    k_ds, fallback = pick_knowledge_ds(user_days, item_days, cutoff)
    if fallback == "common_partition":
        log.warning("user_knowledge newest <= %s is %s but item_knowledge's is %s: using %s, the newest "
                    "partition both have", cutoff, max(d for d in user_days if d <= cutoff),
                    max(d for d in item_days if d <= cutoff), k_ds)
    return k_ds, fallback


@dataclass(frozen=True)
class Group:
    """Consecutive sample days that use the same knowledge partition (one Spark job, one commit)."""

    knowledge_ds: str | None  # None: no knowledge <= D - lag for these days (null LUM columns)
    fallback: str | None  # as pick_knowledge_ds: None, "common_partition" or "no_knowledge"
    days: tuple[str, ...]  # days with a samples partition, ascending


def plan_groups(sample_days: list[str], user_days: list[str], item_days: list[str], lag: int) -> list[Group]:
    """Split ``sample_days`` (ascending) into runs with the same knowledge choice (pure function)."""
    groups: list[Group] = []
    for day in sample_days:
        k_ds, fallback = pick_knowledge_ds(user_days, item_days, days_before(day, lag))
        if groups and groups[-1].knowledge_ds == k_ds and groups[-1].fallback == fallback:
            last = groups[-1]
            groups[-1] = Group(knowledge_ds=k_ds, fallback=fallback, days=last.days + (day,))
        else:
            groups.append(Group(knowledge_ds=k_ds, fallback=fallback, days=(day,)))
    return groups
