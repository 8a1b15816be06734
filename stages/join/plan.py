"""Which knowledge partition serves day D: the point-in-time rule of the join.

Knowledge partition K for day D is the newest ds with K <= D - lag (lag >= 1, so K is strictly
before D) present in BOTH user_knowledge and item_knowledge. When the two tables' newest partitions
<= D - lag differ, the newest day both have is used (fallback ``"common_partition"``); when there is
none, the day has no knowledge (fallback ``"no_knowledge"``: null LUM columns). A range of days is
split into runs of consecutive days with the same choice (``plan_groups``), one Spark job each.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from stages.core.dates import days_before
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


def choose_knowledge_ds(wh: Warehouse, cutoff: str,
                        versions: Mapping[str, int | None] | None = None) -> tuple[str | None, str | None]:
    """``pick_knowledge_ds`` on the knowledge partitions (at ``versions``); logs the common-partition fallback."""
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
