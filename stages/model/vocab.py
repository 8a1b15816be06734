"""Conditions <-> features, the item/condition vocabulary, and the token layout ``[c1, i1, c2, i2, ...]``.

All ids are row indices into embedding tables (`Vocab`):
- items: row 0 is the OOV row (ids unknown to the vocabulary); known ids get rows 1..n_items in ascending id
  order. The vocabulary comes from the items table, so training never sees an OOV id and that row stays near
  its random init, scoring about 0 against users: documented, not an error.
- conditions: id 0 is unknown; ids 1.. are the cartesian product of the feature values (every category of
  ``items``, even ones no event has, every scenario, and ``liked`` always ``<unk>, no, yes``: a behaviour without
  a rating keeps its category), so any condition a query asks for has a row and ``liked`` ids never depend on
  the day; ``cond_features[c, k]`` is feature k's value index, ``item_category[row]`` the item token's category.
A sequence of L behaviours becomes 2L tokens ``c1, i1, ..., cL, iL`` (``interleave``); outputs at condition
positions (even offsets) predict the item that follows them.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

KNOWN_FEATURES = ("category", "scenario", "liked")
UNKNOWN = "<unk>"
LIKED_VALUES = [UNKNOWN, "no", "yes"]  # the feedback feature: fixed values (stable condition ids across days)
PRODUCT_WITH_UNKNOWN = ("liked",)  # features whose <unk> value still makes conditions (an unrated behaviour)


def parse_condition(condition: str, features: Sequence[str]) -> dict[str, str]:
    """``"category=Comedy,scenario=rating"`` -> ``{"category": "Comedy", "scenario": "rating"}``.

    Raises ValueError if a feature is missing, unknown or out of order.
    """
    parts = [p for p in condition.split(",") if p] if condition else []
    out: dict[str, str] = {}
    for part in parts:
        if "=" not in part:
            raise ValueError(f"condition {condition!r}: expected feature=value, got {part!r}")
        key, value = part.split("=", 1)
        out[key] = value
    if tuple(out) != tuple(features):
        raise ValueError(f"condition {condition!r} must name features {','.join(features)} in that order")
    return out


def format_condition(values: dict[str, str], features: Sequence[str]) -> str:
    """Inverse of `parse_condition`: ``{"category": "Comedy"}`` -> ``"category=Comedy"``."""
    return ",".join(f"{f}={values[f]}" for f in features)


@dataclass
class Vocab:
    """Item ids <-> rows and condition strings <-> ids (see module docstring for the layout)."""

    item_ids: np.ndarray                    # (n_items,) int64, sorted ascending; row = index + 1
    item_category: np.ndarray               # (n_items + 1,) int64 category value index per row (row 0: 0)
    features: tuple[str, ...]               # condition features in string order, e.g. ("category",)
    feature_values: dict[str, list[str]]    # per feature: value list; index 0 is UNKNOWN
    conditions: list[str] = field(default_factory=list)  # condition id -> string; id 0 is UNKNOWN
    _cond_index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.conditions:
            combos = itertools.product(*(self.feature_values[f][0 if f in PRODUCT_WITH_UNKNOWN else 1:]
                                         for f in self.features))
            self.conditions = [UNKNOWN] + [
                format_condition(dict(zip(self.features, c)), self.features) for c in combos]
        self._cond_index = {c: i for i, c in enumerate(self.conditions)}

    # ---- building -------------------------------------------------------------------------------
    @classmethod
    def build(cls, item_ids: Iterable[int], item_categories: Iterable[str], *,
              features: Sequence[str] = ("category",), scenarios: Iterable[str] = ()) -> Vocab:
        """Vocab from the items table (ids + primary category) and the scenarios seen in events."""
        features = tuple(features)
        for f in features:
            if f not in KNOWN_FEATURES:
                raise ValueError(f"condition feature {f!r} unknown; choose from {', '.join(KNOWN_FEATURES)}")
        if len(set(features)) != len(features) or not features:
            raise ValueError(f"condition features must be non-empty and distinct, got {features}")
        ids = np.asarray(list(item_ids), dtype=np.int64)
        cats = np.asarray([c if c else UNKNOWN for c in item_categories], dtype=object)
        if ids.shape != cats.shape:
            raise ValueError(f"item_ids ({ids.shape[0]}) and item_categories ({cats.shape[0]}) differ in length")
        order = np.argsort(ids, kind="stable")
        ids, cats = ids[order], cats[order]
        if ids.size and (np.diff(ids) == 0).any():
            raise ValueError(f"item_id duplicated in items: {ids[:-1][np.diff(ids) == 0][:5].tolist()}")
        category_values = [UNKNOWN] + sorted({str(c) for c in cats} - {UNKNOWN})
        values = {"category": category_values,
                  "scenario": [UNKNOWN] + sorted({str(s) for s in scenarios if s}),
                  "liked": list(LIKED_VALUES)}
        cat_index = {c: i for i, c in enumerate(category_values)}
        item_category = np.zeros(ids.size + 1, dtype=np.int64)
        item_category[1:] = [cat_index.get(str(c), 0) for c in cats]
        return cls(item_ids=ids, item_category=item_category, features=features,
                   feature_values={f: values[f] for f in features})

    # ---- lookups --------------------------------------------------------------------------------
    @property
    def n_item_rows(self) -> int:
        return int(self.item_ids.size) + 1

    @property
    def n_conditions(self) -> int:
        return len(self.conditions)

    @property
    def n_categories(self) -> int:
        """Rows of the item-category table (the category feature's values, or 1 when not a feature)."""
        return len(self.category_values())

    def category_values(self) -> list[str]:
        return self.feature_values.get("category", [UNKNOWN])

    def item_rows(self, item_ids: np.ndarray | Sequence[int]) -> np.ndarray:
        """Item ids -> rows (int64); unknown ids -> 0 (the OOV row)."""
        ids = np.asarray(item_ids, dtype=np.int64)
        if self.item_ids.size == 0:
            return np.zeros(ids.shape, dtype=np.int64)
        pos = np.searchsorted(self.item_ids, ids)
        pos_c = np.minimum(pos, self.item_ids.size - 1)
        hit = self.item_ids[pos_c] == ids
        return np.where(hit, pos_c + 1, 0).astype(np.int64)

    def condition_ids(self, conditions: Sequence[str]) -> np.ndarray:
        """Condition strings -> ids (int64); unknown strings -> 0."""
        get = self._cond_index.get
        return np.fromiter((get(c, 0) for c in conditions), dtype=np.int64, count=len(conditions))

    def condition_id(self, condition: str) -> int:
        """One condition string -> id; raises ValueError naming it when it is not in the vocabulary."""
        if condition not in self._cond_index or condition == UNKNOWN:
            raise ValueError(f"condition {condition!r} not in the model vocabulary "
                             f"(features {','.join(self.features)}; e.g. {self.conditions[1:3]})")
        return self._cond_index[condition]

    def cond_features(self) -> np.ndarray:
        """(n_conditions, n_features) int64: value index of each feature for each condition id."""
        out = np.zeros((self.n_conditions, len(self.features)), dtype=np.int64)
        index = {f: {v: i for i, v in enumerate(self.feature_values[f])} for f in self.features}
        for cid, cond in enumerate(self.conditions[1:], start=1):
            parsed = parse_condition(cond, self.features)
            out[cid] = [index[f][parsed[f]] for f in self.features]
        return out

    def item_conditions(self, scenario: str | None = None, liked: str = "yes") -> np.ndarray:
        """(n_item_rows,) condition id of each item's own category (needs "category" in features;
        with "scenario" too, `scenario` picks the scenario value; with "liked", `liked` picks its value:
        "yes" by default, the question being what the user would like). OOV row -> 0."""
        if "category" not in self.features:
            raise ValueError("item_conditions needs 'category' among the condition features")
        if "scenario" in self.features and scenario is None:
            values = self.feature_values["scenario"]
            scenario = values[1] if len(values) > 1 else UNKNOWN
        cats = self.category_values()
        out = np.zeros(self.n_item_rows, dtype=np.int64)
        for row in range(1, self.n_item_rows):
            vals = {"category": cats[self.item_category[row]], "scenario": scenario or "", "liked": liked}
            out[row] = self._cond_index.get(format_condition(vals, self.features), 0)
        return out

    # ---- persistence ----------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps({"item_ids": self.item_ids.tolist(), "item_category": self.item_category.tolist(),
                           "features": list(self.features), "feature_values": self.feature_values,
                           "conditions": self.conditions})

    @classmethod
    def from_json(cls, text: str) -> Vocab:
        d = json.loads(text)
        return cls(item_ids=np.asarray(d["item_ids"], dtype=np.int64),
                   item_category=np.asarray(d["item_category"], dtype=np.int64),
                   features=tuple(d["features"]), feature_values=d["feature_values"],
                   conditions=list(d["conditions"]))


def interleave(cond_tokens, item_tokens):
    """(N, ...) condition and (N, ...) item tensors -> (2N, ...) as ``c1, i1, c2, i2, ...``.

    Works on any torch tensors whose first dim is the behaviour index; packed offsets double
    (behaviour cu_seqlens * 2 = token cu_seqlens) because each behaviour becomes exactly 2 tokens.
    """
    if cond_tokens.shape != item_tokens.shape:
        raise ValueError(f"interleave: shapes differ {tuple(cond_tokens.shape)} vs {tuple(item_tokens.shape)}")
    return torch.stack([cond_tokens, item_tokens], dim=1).reshape(-1, *cond_tokens.shape[1:])


def behaviour_conditions(categories: Sequence[str], scenarios: Sequence[str], features: Sequence[str]) -> list[str]:
    """The condition string of each behaviour from its item category and scenario."""
    out = []
    for cat, scen in zip(categories, scenarios):
        vals = {"category": cat if cat else UNKNOWN, "scenario": scen if scen else UNKNOWN}
        out.append(format_condition(vals, features))
    return out
