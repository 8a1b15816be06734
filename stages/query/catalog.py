"""The knowledge tables of one day as arrays for scoring (``stages.query.score``): the catalog and the users.

``read_catalog``: every item of ``items`` (sorted by id), its category, and its ``item_knowledge`` embedding of
day ds (zeros and ``has_embedding`` False for items the model does not know). Condition columns are the sorted
categories of the catalog; an item's column is -1 when it has no category or no embedding.
``read_users``: ``user_knowledge`` rows of day ds (all users, or some) as (U, C, D) embeddings per column, with
``condition_logprob`` and ``temperature``. A condition maps to the column of its ``category`` feature; other
conditions are ignored (they name no catalog category). A partition written before ``condition_logprob``
existed is refused with a one-line error naming the rerun.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from stages.core.conditions import condition_to_features
from stages.query.lookup import query_user_knowledge
from stages.warehouse.facade import Warehouse

FEATURE = "category"  # the condition feature an item's category fills


@dataclass
class Catalog:
    """The items ranked, in item_id order (I items, D dims, C condition columns)."""

    item_ids: np.ndarray        # (I,) int64, sorted
    titles: list[str | None]    # (I,)
    categories: list[str | None]  # (I,) items.category
    embedding: np.ndarray       # (I, D) float32 e_i; zeros where has_embedding is False
    has_embedding: np.ndarray   # (I,) bool
    columns: list[str]          # (C,) category of each condition column, sorted
    item_col: np.ndarray        # (I,) int64 column of the item's category, -1 when unscorable
    model_version: str | None   # of item_knowledge

    def index(self, item_ids: np.ndarray) -> np.ndarray:
        """Positions of ``item_ids`` in the catalog; -1 for ids not in it."""
        ids = np.asarray(item_ids, dtype=np.int64)
        pos = np.clip(np.searchsorted(self.item_ids, ids), 0, max(len(self.item_ids) - 1, 0))
        found = (self.item_ids[pos] == ids) if len(self.item_ids) else np.zeros(ids.shape, bool)
        return np.where(found, pos, -1)

    def category_col(self) -> np.ndarray:
        """(I,) column of each item's category whether or not it has an embedding (-1: no category)."""
        lookup = {c: i for i, c in enumerate(self.columns)}
        return np.asarray([lookup.get(c, -1) for c in self.categories], dtype=np.int64)


@dataclass
class UserKnowledge:
    """Knowledge of U users over the catalog's C columns."""

    user_ids: np.ndarray      # (U,) int64, sorted
    embedding: np.ndarray     # (U, C, D) float32 o(u, c); zeros where has is False
    has: np.ndarray           # (U, C) bool
    logprob: np.ndarray       # (U, C) float64 condition_logprob; -inf where has is False
    temperature: np.ndarray   # (U,) float64
    model_version: str | None


def _partition_or_error(wh: Warehouse, table: str, ds: str) -> None:
    if ds not in wh.partitions(table):
        raise ValueError(f"{table} has no partition ds={ds}; run `lum run infer --ds {ds}` first")


def read_catalog(warehouse: Warehouse | str, ds: str) -> Catalog:
    wh = Warehouse.of(warehouse)
    if not wh.exists("items"):
        raise ValueError("table items does not exist; ingest a data set first")
    _partition_or_error(wh, "item_knowledge", ds)
    items = wh.read("items", columns=["item_id", "title", "category"]).sort_by("item_id")
    ik = wh.read("item_knowledge", ds=ds, columns=["item_id", "embedding", "model_version"])
    ids = items.column("item_id").to_numpy()
    dim = ik.schema.field("embedding").type.list_size if ik.num_rows else 1
    emb = np.zeros((len(ids), dim), np.float32)
    has = np.zeros(len(ids), bool)
    if ik.num_rows:
        k_ids = ik.column("item_id").to_numpy()
        pos = np.searchsorted(ids, k_ids)
        ok = (pos < len(ids)) & (ids[np.minimum(pos, len(ids) - 1)] == k_ids)
        vectors = np.asarray(ik.column("embedding").combine_chunks().flatten(), np.float32).reshape(-1, dim)
        emb[pos[ok]], has[pos[ok]] = vectors[ok], True
    categories = items.column("category").to_pylist()
    columns = sorted({c for c in categories if c})
    catalog = Catalog(ids, items.column("title").to_pylist(), categories, emb, has, columns,
                      np.zeros(0, np.int64), _one_version(ik, "item_knowledge", ds))
    catalog.item_col = np.where(has, catalog.category_col(), -1)
    return catalog


def _one_version(table: pa.Table, name: str, ds: str) -> str | None:
    versions = set(table.column("model_version").to_pylist()) - {None}
    if len(versions) > 1:
        raise ValueError(f"{name} ds={ds} mixes model versions {sorted(versions)}")
    return versions.pop() if versions else None


def require_logprob(table: pa.Table, ds: str) -> None:
    """One-line error for user_knowledge rows written before condition_logprob existed."""
    if "condition_logprob" not in table.column_names or table.column("condition_logprob").null_count \
            or "temperature" not in table.column_names or table.column("temperature").null_count:
        raise ValueError(f"user_knowledge ds={ds} was written without condition_logprob; "
                         f"rerun lum run infer --ds {ds}")


def read_users(warehouse: Warehouse | str, ds: str, catalog: Catalog,
               user_ids: Sequence[int] | None = None) -> UserKnowledge:
    """All users of partition ds (``user_ids`` None) or the given ones (point lookups; unknown ids are absent)."""
    wh = Warehouse.of(warehouse)
    _partition_or_error(wh, "user_knowledge", ds)
    if user_ids is None:
        present = {f.name for f in wh.delta_table("user_knowledge").schema().fields}
        if "condition_logprob" not in present:
            raise ValueError(f"user_knowledge ds={ds} was written without condition_logprob; "
                             f"rerun lum run infer --ds {ds}")
        rows = wh.read("user_knowledge", ds=ds, columns=["user_id", "condition", "embedding", "model_version",
                                                         "condition_logprob", "temperature"])
    else:
        rows = query_user_knowledge(wh, user_ids=list(user_ids), ds=ds)
    require_logprob(rows, ds)
    version = _one_version(rows, "user_knowledge", ds)
    if catalog.model_version and version and version != catalog.model_version:
        raise ValueError(f"user_knowledge ds={ds} is from model {version}, item_knowledge from "
                         f"{catalog.model_version}; rerun lum run infer --ds {ds}")
    return _to_arrays(rows, catalog, ds)


def _column(condition: str, lookup: dict[str, int]) -> int:
    """The catalog column a knowledge row scores, or -1: its category's column; with the ``liked`` feature only the
    ``liked=yes`` rows score (what the user would like; their condition_logprob is log p(category, liked=yes))."""
    features = condition_to_features(condition)
    if features.get("liked", "yes") != "yes":
        return -1
    return lookup.get(features.get(FEATURE, ""), -1)


def _to_arrays(rows: pa.Table, catalog: Catalog, ds: str) -> UserKnowledge:
    lookup = {c: i for i, c in enumerate(catalog.columns)}
    names = rows.column("condition").to_pylist()
    col_of = {name: _column(name, lookup) for name in set(names)}
    col = np.asarray([col_of[n] for n in names], dtype=np.int64)
    users = rows.column("user_id").to_numpy()
    uids = np.unique(users)
    dim = rows.schema.field("embedding").type.list_size if rows.num_rows else catalog.embedding.shape[1]
    if dim != catalog.embedding.shape[1] and catalog.has_embedding.any():
        raise ValueError(f"user_knowledge ds={ds} has D={dim}, item_knowledge D={catalog.embedding.shape[1]}")
    U, C = len(uids), len(catalog.columns)
    emb = np.zeros((U, C, dim), np.float32)
    has = np.zeros((U, C), bool)
    logprob = np.full((U, C), -np.inf)
    temperature = np.ones(U)
    keep = col >= 0
    u = np.searchsorted(uids, users)
    pairs = u[keep] * max(C, 1) + col[keep]
    if np.unique(pairs).size != pairs.size:
        raise ValueError(f"user_knowledge ds={ds}: a user has several conditions for one {FEATURE}; "
                         f"scoring needs one per {FEATURE}")
    if rows.num_rows:
        vectors = np.asarray(rows.column("embedding").combine_chunks().flatten(), np.float32).reshape(-1, dim)
        emb[u[keep], col[keep]] = vectors[keep]
        has[u[keep], col[keep]] = True
        logprob[u[keep], col[keep]] = rows.column("condition_logprob").to_numpy()[keep]
        temperature[u] = rows.column("temperature").to_numpy()
    return UserKnowledge(uids, emb, has, logprob, temperature, _one_version(rows, "user_knowledge", ds))
