"""``lum ingest synthetic``: a seeded data set with the structure a user model can learn.

``run`` replaces ``events``, ``items``, ``users`` and ``dlrm_samples``. Users have a
persistent taste over categories, heavy-tailed history lengths and Zipf item popularity within a category;
ratings follow the user's taste for the item's category plus the item's quality, so ``label = rating >= 4`` is
learnable from behaviour (the generative story: docs/architecture.md). A user's timestamps strictly increase,
so the event key stays unique; ``event_idx`` is user-major, time order within a user.
The same config (seed AND ``chunk_users``) gives identical tables. Memory is bounded by a chunk of users and the
write buffer, not by the data set: event chunks are staged per day as they are generated and committed once per
table at the end; ``users`` rows stream into their write chunk by chunk (the same rows whatever the chunking).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import schemas
from stages.core.dates import parse_ds
from stages.core.progress import Progress
from stages.ingest.movielens import ML1M_OCCUPATIONS
from stages.ingest.staged import FactWriter
from stages.ingest.tables import day_of, dlrm_samples_from_events
from stages.warehouse.facade import Warehouse

log = logging.getLogger(__name__)

AGE_BUCKETS = np.array([18, 25, 35, 45, 50, 56], dtype=np.int32)  # ML-1M's age groups
AGE_PROBS = np.array([0.18, 0.35, 0.2, 0.1, 0.09, 0.08])
CATEGORY_POPULARITY_EXPONENT = 0.7  # global category skew: w_c ~ (c+1)^-0.7
SECOND_CATEGORY_SHARE = 0.3  # fraction of items with a second category (like multi-genre movies)
RATING_NOISE = 0.7  # std of the per-rating noise: keeps labels learnable but not trivial


@dataclass(frozen=True)
class Config:
    """Options of ``lum ingest synthetic`` (the CLI's --users/--items/... map onto these fields)."""

    users: int = 10_000  # number of users (1M+ for benchmarks)
    items: int = 2_000  # number of items, ids 1..items
    categories: int = 18  # number of item categories (18 = MovieLens genres)
    days: int = 30  # length of the event window in days, starting at `start`
    seed: int = 0  # everything is a function of (seed, config)
    start: str = "2000-01-01"  # first day (UTC), YYYY-MM-DD
    mean_events: float = 20.0  # mean history length per user
    length_sigma: float = 1.0  # lognormal sigma of history lengths: 1.0 gives a heavy tail
    max_events: int = 2_000  # cap on one user's history (must stay < 1e6: ts adds the position in us)
    concentration: float = 0.3  # Dirichlet concentration per category; smaller = more peaked tastes
    item_zipf: float = 1.1  # popularity exponent of items within a category
    chunk_users: int = 50_000  # users generated per chunk: bounds the working memory

    def check(self) -> None:
        for name in ("users", "items", "categories", "days", "max_events", "chunk_users"):
            if getattr(self, name) < 1:
                raise ValueError(f"synthetic: --{name} must be >= 1, got {getattr(self, name)}")
        if self.max_events >= 1_000_000:
            raise ValueError(f"synthetic: max_events must be < 1000000, got {self.max_events}")
        for name in ("mean_events", "length_sigma", "concentration", "item_zipf"):
            if not getattr(self, name) > 0:
                raise ValueError(f"synthetic: {name} must be > 0, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"synthetic: --seed must be >= 0, got {self.seed}")
        parse_ds(self.start, name="synthetic --start")


@dataclass(frozen=True)
class ItemModel:
    """Item side of the generator: category of each item and per-category popularity samplers."""

    category: np.ndarray  # (M,) int64 primary category of item row i (item_id = i + 1)
    second: np.ndarray  # (M,) int64 second category or -1
    quality: np.ndarray  # (M,) float64 item effect on ratings
    order: np.ndarray  # (M,) item rows sorted by (category, popularity rank)
    bounds: np.ndarray  # (M,) category + cumulative popularity within it; last of category c == c + 1
    category_prior: np.ndarray  # (K,) global category popularity, sums to 1


def build_items(cfg: Config, rng: np.random.Generator) -> ItemModel:
    k, m = cfg.categories, cfg.items
    prior = (np.arange(k) + 1.0) ** -CATEGORY_POPULARITY_EXPONENT
    prior /= prior.sum()
    head = np.arange(min(k, m))
    category = np.concatenate([head, rng.choice(k, size=m - len(head), p=prior)])
    category = rng.permutation(category).astype(np.int64)
    order = np.lexsort((rng.random(m), category))  # within a category: random popularity rank
    sorted_cat = category[order]
    starts = np.searchsorted(sorted_cat, np.arange(k))
    rank = np.arange(m) - starts[sorted_cat]
    weight = (rank + 1.0) ** -cfg.item_zipf
    cum = np.cumsum(weight)
    ends = np.searchsorted(sorted_cat, np.arange(k), side="right")
    totals = np.where(ends > starts, cum[np.maximum(ends - 1, 0)], 1.0)
    before = np.where(starts > 0, cum[np.maximum(starts - 1, 0)], 0.0)
    within = (cum - before[sorted_cat]) / (totals - before)[sorted_cat]
    within[ends[ends > starts] - 1] = 1.0  # exact block ends: c + u < c + 1 always finds category c
    other = (category + 1 + rng.integers(0, max(k - 1, 1), m)) % k  # != category when k > 1
    second = np.where(rng.random(m) < SECOND_CATEGORY_SHARE, other, -1)
    second = np.where(second == category, -1, second)
    quality = rng.normal(0.0, 0.5, m)
    return ItemModel(category, second.astype(np.int64), quality, order, sorted_cat + within, prior)


def items_table(model: ItemModel) -> pa.Table:
    m = len(model.category)
    names = np.array([f"c{c:02d}" for c in range(len(model.category_prior))], dtype=object)
    has_second = model.second >= 0
    lengths = 1 + has_second.astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = np.empty(offsets[-1], dtype=object)
    values[offsets[:-1]] = names[model.category]
    values[offsets[:-1][has_second] + 1] = names[model.second[has_second]]
    return pa.table({
        "item_id": pa.array(np.arange(1, m + 1, dtype=np.int64)),
        "title": pc.binary_join_element_wise("item ", pc.cast(pa.array(np.arange(1, m + 1)), pa.string()),
                                             ""),
        "category": pa.array(names[model.category], pa.string()),
        "categories": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.string())),
    })


def user_chunks(cfg: Config) -> Iterator[pa.Table]:
    """The ``users`` rows in chunks of ``chunk_users`` (memory: one chunk), the same rows whatever the chunking.

    One generator ``[seed, 1]`` draws every age, then every gender, then every occupation; age and gender take one
    64-bit draw per user, so each column's stream starts at its offset (``advance``) and is read chunk by chunk."""
    n = cfg.users
    streams = [np.random.default_rng([cfg.seed, 1]) for _ in range(3)]  # age, gender, occupation
    streams[1].bit_generator.advance(n)
    streams[2].bit_generator.advance(2 * n)
    occupations = np.array(ML1M_OCCUPATIONS, dtype=object)
    for first in range(1, n + 1, cfg.chunk_users):
        ids = np.arange(first, min(first + cfg.chunk_users, n + 1), dtype=np.int64)
        k = len(ids)
        yield pa.table({
            "user_id": pa.array(ids),
            "source_id": pc.binary_join_element_wise("syn_", pc.cast(pa.array(ids), pa.string()), ""),
            "age": pa.array(streams[0].choice(AGE_BUCKETS, size=k, p=AGE_PROBS)),
            "gender": pa.array(np.where(streams[1].random(k) < 0.5, "F", "M").astype(object), pa.string()),
            "occupation": pa.array(occupations[streams[2].integers(0, len(occupations), k)], pa.string()),
        })


def events_chunk(cfg: Config, items: ItemModel, first_user: int, n_users: int,
                 first_event_idx: int, rng: np.random.Generator) -> pa.Table:
    """Events of users ``first_user .. first_user + n_users - 1`` (user-major, time-sorted per user)."""
    k = cfg.categories
    mu = np.log(cfg.mean_events) - cfg.length_sigma ** 2 / 2  # lognormal mean = mean_events
    lengths = rng.lognormal(mu, cfg.length_sigma, n_users)
    lengths = np.clip(np.rint(lengths), 1, cfg.max_events).astype(np.int64)
    pref = rng.dirichlet(k * cfg.concentration * items.category_prior, size=n_users)
    cum = np.cumsum(pref, axis=1)
    cum[:, -1] = 1.0
    row = np.repeat(np.arange(n_users), lengths)  # user row of every event
    flat = (cum + np.arange(n_users)[:, None]).ravel()
    cat_pos = np.searchsorted(flat, row + rng.random(len(row)), side="right")
    cat = np.minimum(cat_pos - row * k, k - 1)
    pos = np.searchsorted(items.bounds, cat + rng.random(len(row)), side="right")
    item_row = items.order[np.minimum(pos, len(items.order) - 1)]

    window_s = cfg.days * 86_400
    active_from = (window_s * rng.random(n_users) ** 2).astype(np.int64)
    seconds = active_from[row] + (rng.random(len(row)) * (window_s - active_from[row])).astype(np.int64)
    order = np.argsort(row * window_s + seconds, kind="stable")  # by user, then time; one key beats lexsort
    row, cat, item_row, seconds = row[order], cat[order], item_row[order], seconds[order]
    user_start = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    position = np.arange(len(row)) - user_start[row]  # 0.. within each user
    start_us = int(np.datetime64(cfg.start, "us").astype(np.int64))
    ts_us = start_us + seconds * 1_000_000 + position

    affinity = np.maximum(pref[row, cat] * k, 1e-6)
    score = 3.0 + np.log(affinity) + items.quality[item_row] + rng.normal(0.0, RATING_NOISE, len(row))
    rating = np.clip(np.rint(score), 1, 5).astype(np.float32)
    ts = pa.array(ts_us, pa.timestamp("us", tz="UTC"))
    return pa.table({
        "user_id": pa.array(first_user + row.astype(np.int64)),
        "item_id": pa.array(item_row.astype(np.int64) + 1),
        "ts": ts,
        "scenario": pa.DictionaryArray.from_arrays(np.zeros(len(row), np.int32), ["rating"]).cast(
            pa.string()),
        "rating": pa.array(rating),
        "event_idx": pa.array(first_event_idx + np.arange(len(row), dtype=np.int64)),
        "ds": day_of(ts),
    })


def event_chunks(cfg: Config, items: ItemModel) -> Iterator[pa.Table]:
    """The events of every chunk of ``chunk_users`` users, in order (``event_idx`` continues across chunks)."""
    progress = Progress("synthetic", cfg.users, unit="users", logger=log)
    n_events = 0
    for index, first in enumerate(range(0, cfg.users, cfg.chunk_users)):
        n = min(cfg.chunk_users, cfg.users - first)
        chunk = events_chunk(cfg, items, first + 1, n, n_events, np.random.default_rng([cfg.seed, 2, index]))
        n_events += chunk.num_rows
        progress.update(n, events=n_events)
        yield chunk
    progress.done(events=n_events)


def generate(cfg: Config) -> dict[str, pa.Table]:
    """``{"events", "items", "users"}`` for ``cfg`` held in memory (unvalidated; ``run`` streams instead)."""
    cfg.check()
    items = build_items(cfg, np.random.default_rng([cfg.seed, 0]))
    users = pa.concat_tables(list(user_chunks(cfg)))
    events = pa.concat_tables(list(event_chunks(cfg, items)))
    return {"events": events, "items": items_table(items), "users": users}


def run(cfg: Config, *, warehouse: Warehouse | str | None) -> dict[str, Any]:
    """Replace the four ingested tables, writing the events chunk by chunk; returns the ingest summary.

    items is validated first; each chunk's events and samples are staged per day (``stages.ingest.staged``);
    then items and users are overwritten (users validated and written as generated, chunk by chunk) and ONE
    commit per fact table replaces the whole table (old days emptied). Keys are unique by construction, so no
    cross-chunk key check runs."""
    cfg.check()
    wh = Warehouse.of(warehouse)
    started = time.perf_counter()
    model = build_items(cfg, np.random.default_rng([cfg.seed, 0]))
    items = schemas.get("items").validate(items_table(model))
    writer = FactWriter(wh, f"ingest-synthetic-{uuid.uuid4().hex[:12]}")
    try:
        for events in event_chunks(cfg, model):
            writer.add(events, dlrm_samples_from_events(events))
        writer.finish(check_keys=False)
        built = time.perf_counter()
        versions = {"items": wh.write_table("items", items), "users": wh.write_table("users", user_chunks(cfg))}
        versions.update(writer.commit(replace_all=True))
    except BaseException:
        writer.discard()
        raise
    return writer.summary("synthetic", items=items.num_rows, users=cfg.users, versions=versions, started=started,
                          built=built, finished=time.perf_counter())
