"""Model inputs of ``lum evaluate`` from the warehouse: samples, DIN history and the LUM columns.

All features are point-in-time correct, built from the ``dlrm_training`` rows and the dimensions:
- sparse: user_id, item_id, items.category, users.age / gender / occupation, scenario, hour of day and
  weekday of ts. Vocabularies come from the TRAIN rows only; unseen test values map to index 0.
- history (DIN): the user's last ``history_len`` items with ts strictly before the sample's ts, from the
  loaded rows (train + test: a test sample may look at earlier test-day behaviour, never at its own or
  later) and from ``events`` of the ``history_days`` days before ``train_start``, so the baseline sees the
  past behaviour the LUM was pretrained on: the comparison measures what the LUM adds, not access to history.
- dense LUM: the chosen ``LUM_COLUMNS`` side by side and a has-knowledge flag; nulls -> 0. An optional column
  (``lum_target_match_disliked``: knowledge with ``liked``) is used only where some row has it
  (``present_lum_columns``). ``rating`` is never a feature (the label is rating >= 4).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from stages.core.dates import days_before, next_day, prev_day
from stages.warehouse.facade import Warehouse

log = logging.getLogger(__name__)

LUM_COLUMNS = ("lum_target_match", "lum_match", "lum_user", "lum_item", "lum_target_match_disliked")
SCALAR_COLUMNS = ("lum_target_match", "lum_target_match_disliked")  # one float per row; the others are vectors
OPTIONAL_COLUMNS = ("lum_target_match_disliked",)  # null (or absent) unless the knowledge has ``liked``
SPARSE_FIELDS = ("user_id", "item_id", "category", "age", "gender", "occupation", "scenario", "hour", "weekday")
ITEM_FIELD = SPARSE_FIELDS.index("item_id")


class FeatureOptions(Protocol):
    """The options ``build_features`` reads (``stages.evaluate.stage.Config`` has them)."""

    history_len: int
    lum_columns: tuple[str, ...]


@dataclass
class Tables:
    """The warehouse rows of one evaluation: train/test samples, the dimensions, pre-window events."""

    train: pa.Table
    test: pa.Table
    users: pa.Table | None
    items: pa.Table | None
    prior: pa.Table | None  # (user_id, item_id, ts) events before train_start; DIN history only


@dataclass
class Features:
    """Model inputs of one split: sparse (n, F) int64, history (n, H) int64, dense (n, K) f32, label (n,)."""

    sparse: np.ndarray
    history: np.ndarray
    dense: np.ndarray
    label: np.ndarray


def read_tables(wh: Warehouse, *, train_start: str, train_end: str, test_end: str, history_days: int) -> Tables:
    """``dlrm_training`` days [train_start, train_end] and (train_end, test_end], ``users``, ``items`` and
    ``events`` of the ``history_days`` days before train_start (none when 0). ValueError when the table is
    missing or a split lacks rows of both labels."""
    if not wh.exists("dlrm_training"):
        raise ValueError("table dlrm_training does not exist; run `lum run join` first")
    train = wh.read("dlrm_training", start=train_start, end=train_end)
    test = wh.read("dlrm_training", start=next_day(train_end), end=test_end)
    for name, t in (("train", train), ("test", test)):
        if t.num_rows == 0 or len(set(t.column("label").to_pylist())) < 2:
            raise ValueError(f"dlrm_training has no {name} rows with both labels in that window")
    users = wh.read("users") if wh.exists("users") else None
    items = wh.read("items") if wh.exists("items") else None
    prior = None
    if history_days > 0 and wh.exists("events"):
        first = days_before(train_start, history_days)
        prior = wh.read("events", start=first, end=prev_day(train_start), columns=["user_id", "item_id", "ts"])
        log.info("evaluate: DIN history also from %d events of %s..%s", prior.num_rows, first, train_start)
    return Tables(train, test, users, items, prior)


def present_lum_columns(columns: tuple[str, ...], *tables: pa.Table) -> tuple[str, ...]:
    """``columns`` without the ``OPTIONAL_COLUMNS`` that no row of ``tables`` has (absent or all null), so
    knowledge without ``liked`` gives the same inputs as before the column existed."""
    def present(name: str) -> bool:
        return any(name in t.column_names and t.column(name).null_count < t.num_rows for t in tables)

    return tuple(c for c in columns if c not in OPTIONAL_COLUMNS or present(c))


def _list_matrix(col: pa.ChunkedArray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A list<float> column -> ((n, width) float32 with nulls as 0, (n,) bool valid)."""
    arr = col.combine_chunks()
    n = len(arr)
    out = np.zeros((n, width), np.float32)
    valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), bool)
    if width == 0 or not valid.any():
        return out, valid
    sub = arr.filter(pa.array(valid))
    values = sub.flatten().to_numpy(zero_copy_only=False)
    values = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0)  # null elements -> nan -> 0
    lengths = np.asarray(pc.list_value_length(sub).to_numpy(zero_copy_only=False))
    if lengths.size and (lengths.min() != width or lengths.max() != width):
        raise ValueError(f"list column has lengths {lengths.min()}..{lengths.max()}, expected {width}")
    out[valid] = values.reshape(-1, width)
    return out, valid


def _width(col: pa.ChunkedArray) -> int:
    """Vector length of a list column: the fixed size, else the first non-null row's length (0 if none)."""
    arr = col.combine_chunks()
    if pa.types.is_fixed_size_list(arr.type):
        return arr.type.list_size
    valid = arr.drop_null()
    return int(pc.list_value_length(valid)[0].as_py()) if len(valid) else 0


def dense_lum(table: pa.Table, columns: tuple[str, ...], widths: dict[str, int]) -> np.ndarray:
    """(n, K) float32: the chosen LUM columns side by side, then a has-knowledge flag (K = sum + 1)."""
    parts, has = [], np.zeros(table.num_rows, bool)
    for name in columns:
        if name not in LUM_COLUMNS:
            raise ValueError(f"lum_columns: unknown column {name!r}; choose from {list(LUM_COLUMNS)}")
        col = table.column(name)
        if name in SCALAR_COLUMNS:
            v = np.asarray(pc.fill_null(col, np.nan).to_numpy(zero_copy_only=False), dtype=np.float32)
            valid = ~np.isnan(v)
            parts.append(np.nan_to_num(v, nan=0.0)[:, None])
        else:
            m, valid = _list_matrix(col, widths[name])
            parts.append(m)
        has |= valid
    parts.append(has[:, None].astype(np.float32))
    return np.concatenate(parts, axis=1)


def _history(users: np.ndarray, ts: np.ndarray, items: np.ndarray, h: int) -> np.ndarray:
    """(n, h) item indices of each row's user's last h rows with ts strictly earlier; 0-padded on the left."""
    n = users.size
    out = np.zeros((n, h), np.int64)
    if h == 0 or n == 0:
        return out
    order = np.lexsort((items, ts, users))
    u, t, it = users[order], ts[order], items[order]
    new_user = np.r_[True, u[1:] != u[:-1]]
    user_start = np.maximum.accumulate(np.where(new_user, np.arange(n), 0))
    new_ts = new_user | np.r_[True, t[1:] != t[:-1]]
    first_same_ts = np.maximum.accumulate(np.where(new_ts, np.arange(n), 0))  # rows before it: ts strictly <
    idx = first_same_ts[:, None] - h + np.arange(h)[None, :]
    ok = idx >= user_start[:, None]
    hist = np.where(ok, it[np.clip(idx, 0, n - 1)], 0)
    out[order] = hist
    return out


def _vocab_index(train_values: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, int]:
    """Map values to 1..V by the sorted train vocabulary; unseen -> 0. Returns (indices, V + 1)."""
    vocab = np.unique(train_values)
    pos = np.searchsorted(vocab, values)
    pos_c = np.clip(pos, 0, max(vocab.size - 1, 0))
    hit = (vocab.size > 0) & (vocab[pos_c] == values) if vocab.size else np.zeros(values.size, bool)
    return np.where(hit, pos_c + 1, 0).astype(np.int64), int(vocab.size) + 1


def build_features(train: pa.Table, test: pa.Table, users: pa.Table | None, items: pa.Table | None,
                   cfg: FeatureOptions, prior: pa.Table | None = None) -> tuple[Features, Features, list[int], int]:
    """Train/test model inputs; returns (train, test, vocab sizes per sparse field, dense width K).

    prior: history-only behaviours (user_id, item_id, ts) from before the train window (never rows of the
    model, only DIN history; items outside the train vocabulary become padding 0)."""
    n_train = train.num_rows
    both = pa.concat_tables([train.select(test.column_names), test]) if test.num_rows else train
    df = both.select(["user_id", "item_id", "ts", "label", "scenario"]).to_pandas()
    if items is not None and items.num_rows:
        cat = items.select(["item_id", "category"]).to_pandas().drop_duplicates("item_id")
        df = df.merge(cat, on="item_id", how="left")
    else:
        df["category"] = None
    if users is not None and users.num_rows:
        dims = users.select(["user_id", "age", "gender", "occupation"]).to_pandas().drop_duplicates("user_id")
        df = df.merge(dims, on="user_id", how="left")
    else:
        df["age"] = df["gender"] = df["occupation"] = None
    ts = pd.to_datetime(df["ts"], utc=True)
    df["hour"], df["weekday"] = ts.dt.hour, ts.dt.weekday
    sparse, sizes, train_values = [], [], {}
    for name in SPARSE_FIELDS:
        values = df[name].astype(str).to_numpy()
        train_values[name] = values[:n_train]
        idx, size = _vocab_index(train_values[name], values)
        sparse.append(idx)
        sizes.append(size)
    sparse_m = np.stack(sparse, axis=1)
    ts_us = ts.astype("int64").to_numpy()
    h_users, h_ts, h_items = df["user_id"].to_numpy(), ts_us, sparse_m[:, ITEM_FIELD]
    n_prior = prior.num_rows if prior is not None and cfg.history_len else 0
    if n_prior:
        p = prior.select(["user_id", "item_id", "ts"]).to_pandas()
        p_items, _ = _vocab_index(train_values["item_id"], p["item_id"].astype(str).to_numpy())
        h_users = np.concatenate([p["user_id"].to_numpy(), h_users])
        h_ts = np.concatenate([pd.to_datetime(p["ts"], utc=True).astype("int64").to_numpy(), h_ts])
        h_items = np.concatenate([p_items, h_items])
    history = _history(h_users, h_ts, h_items, cfg.history_len)[n_prior:]
    if cfg.lum_columns:
        widths = {c: _width(both.column(c)) for c in ("lum_match", "lum_user", "lum_item") if c in cfg.lum_columns}
        dense = dense_lum(both, tuple(cfg.lum_columns), widths)
    else:
        dense = np.zeros((len(df), 0), np.float32)
    labels = df["label"].fillna(0).to_numpy().astype(np.float32)

    def part(sl: slice) -> Features:
        return Features(sparse_m[sl], history[sl], dense[sl], labels[sl])

    return part(slice(0, n_train)), part(slice(n_train, None)), sizes, dense.shape[1]
