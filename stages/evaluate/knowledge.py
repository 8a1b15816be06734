"""``lum evaluate knowledge --ds K``: does the knowledge of day K predict what each user does next?

For every user with ``user_knowledge`` on K who has an event after K, the target is the user's first item after
K (``events`` with ds > K, the earliest by (ts, event_idx)). Every item of ``items`` is ranked by the knowledge
score (``stages.query.score``: log p(category | history) + log p(item | history, category), from the knowledge
tables of K alone), the user's seen items (events with ds <= K) removed; a seen target is a miss. Next to it:
- ``popularity``: items by their count of events in the ``popularity_days`` days up to K (inclusive);
- ``user_categories``: the categories of the user's history by count (ties by name), each filled by popularity,
  then the categories the user never watched by popularity;
- ``*_within_category``: the LUM score and popularity ranking the target among the items of its own category.
Ties count against the target. HR@k and NDCG@k of each, the users evaluated and the LUM / popularity ratio go to
``out`` (JSON) and the summary's ``table``. Memory: ``chunk_users`` x items floats per array at a time.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.compute as pc

from stages.core.dates import check_ds, days_before, next_day
from stages.query.catalog import Catalog, UserKnowledge, read_catalog, read_users
from stages.query.score import hit_ndcg, knowledge_scores, target_ranks
from stages.warehouse.facade import Warehouse

log = logging.getLogger(__name__)

METHODS = ("lum", "popularity", "user_categories", "lum_within_category", "popularity_within_category")


@dataclass(frozen=True)
class Config:
    ds: str = ""  # the knowledge day K (YYYY-MM-DD); required, --ds
    out: str = ""  # the JSON report; "" = reports/evaluate_knowledge_<K>.json (--out)
    k: int = 10  # cutoff of HR@k and NDCG@k
    popularity_days: int = 30  # the popularity baselines count events of the days K - popularity_days + 1 .. K
    chunk_users: int = 1024  # users scored at once (bounds memory: a few chunk_users x items arrays)


@dataclass
class Targets:
    """The evaluated users (E of them) and what the baselines need about each."""

    rows: np.ndarray       # (E,) row of each user in UserKnowledge
    target: np.ndarray     # (E,) catalog position of the first item after K
    seen_user: np.ndarray  # (S,) index into the E users of each (user, seen item) pair, sorted
    seen_item: np.ndarray  # (S,) catalog position
    cat_counts: np.ndarray  # (E, C) the user's history events per category column
    popularity: np.ndarray  # (I,) events per item in the popularity window
    counts: dict[str, int]  # users acting after K, targets outside the catalog


def _check(cfg: Config) -> None:
    check_ds(cfg.ds, name="ds")
    for name in ("k", "popularity_days", "chunk_users"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")


def first_items_after(wh: Warehouse, ds: str) -> tuple[np.ndarray, np.ndarray]:
    """(user_ids, item_ids): each user's earliest event after ds by (ts, event_idx); ValueError when none."""
    if not wh.exists("events"):
        raise ValueError("table events does not exist; ingest a data set first")
    later = wh.read("events", start=next_day(ds), columns=["user_id", "item_id", "ts", "event_idx"])
    if later.num_rows == 0:
        raise ValueError(f"events has no behaviour after ds={ds}: the knowledge of {ds} cannot be evaluated yet")
    users = later.column("user_id").to_numpy()
    ts = later.column("ts").cast("int64").to_numpy()
    idx = later.column("event_idx").fill_null(0).to_numpy()
    order = np.lexsort((idx, ts, users))
    users, items = users[order], later.column("item_id").to_numpy()[order]
    first = np.r_[True, users[1:] != users[:-1]]
    return users[first], items[first]


def gather_targets(wh: Warehouse, ds: str, catalog: Catalog, users: UserKnowledge, popularity_days: int,
                   after: tuple[np.ndarray, np.ndarray]) -> Targets:
    """The evaluated users (knowledge on ds and an event after it, ``after`` = first_items_after) and history."""
    after_users, after_items = after
    known = np.isin(after_users, users.user_ids)
    pos = catalog.index(after_items[known])
    if not known.any():
        raise ValueError(f"no user with user_knowledge on {ds} has an event after {ds}")
    ok = pos >= 0
    if not ok.any():
        raise ValueError(f"no first item after {ds} of a user with knowledge is in the items table")
    rows = np.searchsorted(users.user_ids, after_users[known][ok])
    past = wh.read("events", end=ds, columns=["user_id", "item_id", "ds"])
    p_users = past.column("user_id").to_numpy()
    p_pos = catalog.index(past.column("item_id").to_numpy())
    first_day = days_before(ds, popularity_days - 1)
    window = pc.greater_equal(past.column("ds"), first_day).to_numpy(zero_copy_only=False) & (p_pos >= 0)
    popularity = np.bincount(p_pos[window], minlength=len(catalog.item_ids)).astype(np.float64)
    evaluated = users.user_ids[rows]
    e = np.searchsorted(evaluated, p_users)
    mine = (e < len(evaluated)) & (evaluated[np.minimum(e, len(evaluated) - 1)] == p_users) & (p_pos >= 0)
    order = np.argsort(e[mine], kind="stable")
    seen_user, seen_item = e[mine][order], p_pos[mine][order]
    cat = catalog.category_col()[seen_item]
    cat_counts = np.zeros((len(evaluated), len(catalog.columns)))
    np.add.at(cat_counts, (seen_user[cat >= 0], cat[cat >= 0]), 1.0)
    return Targets(rows, pos[ok], seen_user, seen_item, cat_counts, popularity,
                   {"users_acting_after": int(known.sum()), "targets_not_in_catalog": int((~ok).sum())})


def _user_category_scores(cat_counts: np.ndarray, item_cat: np.ndarray, popularity: np.ndarray) -> np.ndarray:
    """(E, I): the user's categories by count (never-watched ones and uncategorised items last), then popularity."""
    E, C = cat_counts.shape
    order = np.argsort(-cat_counts, axis=1, kind="stable")              # ties: column (category name) order
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(C)[None, :].repeat(E, 0), axis=1)
    rank = np.where(cat_counts > 0, rank, C)
    rank = np.concatenate([rank, np.full((E, 1), C)], axis=1)           # column C: items without a category
    item_rank = rank[:, np.where(item_cat >= 0, item_cat, C)]
    return -item_rank * (popularity.max(initial=0.0) + 1.0) + popularity[None, :]


def rank_targets(catalog: Catalog, users: UserKnowledge, t: Targets, chunk_users: int) -> dict[str, np.ndarray]:
    """0-based rank of every evaluated user's target under each method (METHODS)."""
    item_cat = catalog.category_col()
    out: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
    for start in range(0, len(t.rows), chunk_users):
        sl = slice(start, start + chunk_users)
        r, target = t.rows[sl], t.target[sl]
        n = len(r)
        seen = np.zeros((n, len(catalog.item_ids)), bool)
        lo, hi = np.searchsorted(t.seen_user, [start, start + n])
        seen[t.seen_user[lo:hi] - start, t.seen_item[lo:hi]] = True
        other_cat = item_cat[None, :] != item_cat[target][:, None]
        lum = knowledge_scores(users.embedding[r], users.has[r], users.logprob[r], users.temperature[r],
                               catalog.embedding, catalog.item_col)
        pop = np.broadcast_to(t.popularity, seen.shape)
        out["lum"].append(target_ranks(lum, target, seen))
        out["popularity"].append(target_ranks(pop, target, seen))
        out["user_categories"].append(target_ranks(_user_category_scores(t.cat_counts[sl], item_cat, t.popularity),
                                                   target, seen))
        out["lum_within_category"].append(target_ranks(lum, target, seen | other_cat))
        out["popularity_within_category"].append(target_ranks(pop, target, seen | other_cat))
    return {m: np.concatenate(v) if v else np.zeros(0, np.int64) for m, v in out.items()}


def run(cfg: Config, *, warehouse: Warehouse | str) -> dict[str, Any]:
    """Evaluate the knowledge of day ``cfg.ds``; writes the JSON report, returns the summary with its ``table``."""
    _check(cfg)
    started = time.perf_counter()
    wh = Warehouse.of(warehouse)
    after = first_items_after(wh, cfg.ds)
    catalog = read_catalog(wh, cfg.ds)
    users = read_users(wh, cfg.ds, catalog)
    t = gather_targets(wh, cfg.ds, catalog, users, cfg.popularity_days, after)
    ranks = rank_targets(catalog, users, t, cfg.chunk_users)
    k = cfg.k
    metrics = {m: dict(zip((f"hr@{k}", f"ndcg@{k}"), (round(v, 4) for v in hit_ndcg(r, k))))
               for m, r in ranks.items()}
    ratio = {name: (round(metrics["lum"][name] / metrics["popularity"][name], 3)
                    if metrics["popularity"][name] else None) for name in (f"hr@{k}", f"ndcg@{k}")}
    n_items = len(catalog.item_ids)
    seen_targets = int(np.isin(np.arange(len(t.rows)) * n_items + t.target, t.seen_user * n_items + t.seen_item).sum())
    out = cfg.out or os.path.join("reports", f"evaluate_knowledge_{cfg.ds}.json")
    report = {
        "ds": cfg.ds, "k": k, "users_with_knowledge": int(len(users.user_ids)), "users_evaluated": int(len(t.rows)),
        **t.counts, "targets_seen_before": seen_targets,
        "targets_without_lum_score": int((catalog.item_col[t.target] < 0).sum()),
        "catalog_items": int(len(catalog.item_ids)), "items_with_embedding": int(catalog.has_embedding.sum()),
        "popularity_window": [days_before(cfg.ds, cfg.popularity_days - 1), cfg.ds],
        "model_version": users.model_version, "metrics": metrics, "lum_over_popularity": ratio,
        "seconds": round(time.perf_counter() - started, 2),
    }
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as fh:
        json.dump(report, fh, indent=2)
    log.info("evaluate knowledge %s: %d users, LUM HR@%d %.4f, popularity %.4f", cfg.ds, len(t.rows), k,
             metrics["lum"][f"hr@{k}"], metrics["popularity"][f"hr@{k}"])
    table = [{"method": m, f"HR@{k}": metrics[m][f"hr@{k}"], f"NDCG@{k}": metrics[m][f"ndcg@{k}"]} for m in METHODS]
    return {"ds": cfg.ds, "users_evaluated": report["users_evaluated"],
            **{f"{m}_{name}": metrics[m][name] for m in ("lum", "popularity", "user_categories")
               for name in (f"hr@{k}", f"ndcg@{k}")},
            "lum_over_popularity_" + f"hr@{k}": ratio[f"hr@{k}"], "report": out, "seconds": report["seconds"],
            "table": table}
