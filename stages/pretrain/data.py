"""Training inputs for pretrain: user_sequences partition D -> jagged item rows / condition ids + vocab,
and remapping a parent version's weights onto a grown vocabulary (daily continuation).

Condition features are read from the sequences' condition strings (``category=Comedy,scenario=rating``
-> ("category", "scenario")); the vocabulary takes every category of the ``items`` table (even ones no
event has yet) and every scenario seen in the sequences. ``load_sequences`` holds one whole partition in memory
(evaluation); training streams it (``stages.pretrain.stream``) through ``decode_rows`` and ``sequence_vocab``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stages.model.vocab import Vocab, parse_condition
from stages.warehouse.facade import Warehouse

log = logging.getLogger(__name__)


@dataclass
class SeqData:
    user_ids: np.ndarray          # (U,) int64
    items: list[np.ndarray]       # per user: item rows, oldest first
    conds: list[np.ndarray]       # per user: condition ids
    last_ts: np.ndarray           # (U,) datetime64[us] of the newest behaviour (NaT when empty)
    vocab: Vocab
    ts: list[np.ndarray] | None = None  # per user: int64 epoch seconds of each behaviour


def load_sequences(wh: Warehouse, ds: str, vocab: Vocab | None = None) -> SeqData:
    """Read partition ``ds`` of user_sequences into memory, users in user_id order (the leave-last-out evaluation;
    training streams it: ``stages.pretrain.stream``). vocab: None = built from the partition (``sequence_vocab``).
    Raises ValueError when the partition is missing or empty."""
    check_partition(wh, ds)
    t = wh.read("user_sequences", ds=ds, columns=["user_id", "item_ids", "conditions", "ts"])
    if t.num_rows == 0:
        raise ValueError(f"user_sequences partition ds={ds} is empty")
    t = t.sort_by("user_id")
    if vocab is None:
        vocab = sequence_vocab(wh, set(pc.unique(pc.list_flatten(t.column("conditions"))).to_pylist()), ds)
    user_ids, items, conds, ts, last = decode_rows(t, vocab)
    n_oov, n_unk = int(sum((x == 0).sum() for x in items)), int(sum((c == 0).sum() for c in conds))
    if n_oov or n_unk:
        log.info("sequences: %d behaviours with items unknown to the items table (OOV row), %d unknown conditions",
                 n_oov, n_unk)
    return SeqData(user_ids=user_ids, items=items, conds=conds, last_ts=last, vocab=vocab, ts=ts)


def check_partition(wh: Warehouse, ds: str) -> None:
    """ValueError when user_sequences has no partition ``ds``."""
    if not wh.exists("user_sequences") or ds not in wh.partitions("user_sequences"):
        raise ValueError(f"user_sequences has no partition ds={ds}; run `lum run sequences --ds {ds}` first")


def read_items(wh: Warehouse) -> tuple[np.ndarray, list]:
    """(item ids, primary categories) of the items table: the vocabulary's items."""
    items_t = wh.read("items", columns=["item_id", "category"])
    return items_t.column("item_id").to_numpy(), items_t.column("category").to_pylist()


def sequence_vocab(wh: Warehouse, conditions: set, ds: str, items: tuple[np.ndarray, list] | None = None) -> Vocab:
    """The vocabulary of a partition whose distinct condition strings are ``conditions``: the features of its
    (smallest) non-empty condition, every scenario seen, every item and category of ``items`` (read when None)."""
    present = sorted(c for c in conditions if c)
    if not present:
        raise ValueError(f"user_sequences ds={ds} has no behaviours (all conditions lists empty)")
    features = tuple(part.split("=", 1)[0] for part in present[0].split(","))
    scenarios: set[str] = set()
    if "scenario" in features:
        scenarios = {parse_condition(c, features)["scenario"] for c in present}
    item_ids, categories = read_items(wh) if items is None else items
    return Vocab.build(item_ids, categories, features=features, scenarios=scenarios)


def decode_rows(t: pa.Table | pa.RecordBatch, vocab: Vocab, *, conditions: bool = True):
    """user_sequences rows -> (user_ids (U,), item rows, condition ids, ts seconds: per user, oldest first;
    last_ts (U,) datetime64[us], NaT when empty). conditions False: ids all 0 (callers that only count)."""
    flat_items = pc.list_flatten(t.column("item_ids")).to_numpy()
    rows = vocab.item_rows(flat_items)
    if conditions:  # each distinct string looked up once (a null element maps to 0, unknown)
        flat = pc.list_flatten(t.column("conditions"))
        enc = pc.dictionary_encode(flat.combine_chunks() if isinstance(flat, pa.ChunkedArray) else flat)
        ids = np.append(vocab.condition_ids(enc.dictionary.to_pylist()), 0)
        cids = ids[pc.fill_null(enc.indices, len(enc.dictionary)).to_numpy(zero_copy_only=False)]
    else:
        cids = np.zeros(rows.size, dtype=np.int64)
    lens = pc.list_value_length(t.column("item_ids")).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lens)])
    items = [rows[offsets[i]:offsets[i + 1]] for i in range(len(lens))]
    conds = [cids[offsets[i]:offsets[i + 1]] for i in range(len(lens))]
    ts_flat = pc.list_flatten(t.column("ts")).to_numpy(zero_copy_only=False).astype("datetime64[us]")
    last = np.array([ts_flat[offsets[i + 1] - 1] if lens[i] else np.datetime64("NaT")
                     for i in range(len(lens))], dtype="datetime64[us]")
    secs = ts_flat.astype(np.int64) // 1_000_000
    ts = [secs[offsets[i]:offsets[i + 1]] for i in range(len(lens))]
    return t.column("user_id").to_numpy(), items, conds, ts, last


def remap_state(old: dict, old_vocab: Vocab, new: dict, new_vocab: Vocab) -> dict:
    """The parent's weights on the new vocabulary: embedding rows copied by item id / feature value,
    rows for new ids keep their fresh init; vocabulary buffers come from the new vocab."""
    out = dict(new)
    old_rows = old_vocab.item_rows(new_vocab.item_ids)               # new row r (>=1) -> old row
    for key, value in old.items():
        if key not in new:
            continue
        if key in ("item_category", "cond_features"):
            continue
        if key == "item_id_emb.weight":
            w = new[key].clone()
            known = np.nonzero(old_rows)[0]
            w[0] = value[0]
            w[known + 1] = value[old_rows[known]]
            out[key] = w
        elif key == "item_cat_emb.weight":
            out[key] = _by_values(value, old_vocab.category_values(), new[key], new_vocab.category_values())
        elif key.startswith("cond_embs."):
            k = int(key.split(".")[1])
            f = new_vocab.features[k]
            if k < len(old_vocab.features) and old_vocab.features[k] == f:
                out[key] = _by_values(value, old_vocab.feature_values[f], new[key], new_vocab.feature_values[f])
        elif value.shape == new[key].shape:
            out[key] = value
        else:
            raise ValueError(f"parent weight {key} has shape {tuple(value.shape)}, new model {tuple(new[key].shape)}: "
                             "config changed; rerun with --retrain")
    return out


def _by_values(old_w, old_values: list[str], new_w, new_values: list[str]):
    w = new_w.clone()
    index = {v: i for i, v in enumerate(old_values)}
    for j, v in enumerate(new_values):
        if v in index:
            w[j] = old_w[index[v]]
    return w


def training_windows(items: list[np.ndarray], conds: list[np.ndarray], max_len: int,
                     windows: int, ts: list[np.ndarray] | None = None):
    """Cut each user's history into windows of at most ``max_len`` behaviours, newest first: window 0 is the
    last max_len behaviours (what SASRec trains on), window 1 the max_len before it, ...

    windows: per user, 0 = all the partition holds. Older windows under 2 behaviours (no next-item target) and
    empty histories are dropped. Returns (items, conds) of the kept windows, oldest behaviour first in each,
    and their ``ts`` windows as a third list when ``ts`` is given.
    """
    if max_len <= 0 or windows < 0:
        raise ValueError(f"training_windows: max_len {max_len} must be > 0 and windows {windows} >= 0")
    out_i: list[np.ndarray] = []
    out_c: list[np.ndarray] = []
    out_t: list[np.ndarray] = []
    for u, (it, cd) in enumerate(zip(items, conds)):
        end, k = len(it), 0
        while end > 0 and (windows == 0 or k < windows):
            start = max(0, end - max_len)
            if k == 0 or end - start >= 2:
                out_i.append(it[start:end])
                out_c.append(cd[start:end])
                if ts is not None:
                    out_t.append(ts[u][start:end])
            end, k = start, k + 1
    return (out_i, out_c, out_t) if ts is not None else (out_i, out_c)
