"""Query condition sets: which condition tokens ``c_q`` each user is asked about (LUM step 2).

A condition is ``feature=value`` pairs joined by ``,`` in the model's feature order: ``category=Comedy``, or
``category=Comedy,scenario=rating`` (a multi-condition query: the paper's extra condition features). Specs:
- ``all`` (default): one condition per value of the query feature the model knows; the same N for every user.
- ``top:K``: the user's K most frequent values of the query feature (ties: the more recent, then by name),
  so N = min(K, distinct values in the history) varies per user.
- ``list:C1;C2;...``: fixed condition strings (``;`` between conditions, since ``,`` separates features).
``with_features`` (e.g. ``scenario=rating``) is merged into every condition of the set; the value ``*`` crosses the
set with every value of that feature the model knows except ``<unk>`` (``resolve``): ``all`` with
``liked=*`` asks ``category=X,liked=no`` and ``category=X,liked=yes`` for every category X. Output strings follow
the model's feature order, so one query always gets one string: it is part of the ``user_knowledge`` key.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

ANY = "*"  # a with_features value: every value of the feature the model knows, except UNKNOWN
UNKNOWN = "<unk>"
FEEDBACK = "liked"  # the feature that carries the user's feedback (yes / no): infer asks both, the join splits them


def condition_to_features(text: str) -> dict[str, str]:
    """``"category=Comedy,scenario=rating"`` -> ``{"category": "Comedy", "scenario": "rating"}``.

    Any features in any order (string order kept), values trimmed; a pair without ``=``, an empty name
    or value, or a feature named twice is a ``ValueError``. ``stages.model.vocab.parse_condition`` is
    the strict variant that also requires the model's features in the model's order.
    """
    out: dict[str, str] = {}
    for part in str(text).split(","):
        name, sep, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise ValueError(f"condition must be feature=value[,feature=value...], got {text!r}")
        if name in out:
            raise ValueError(f"condition {text!r} names feature {name!r} twice")
        out[name] = value
    return out


def format_condition(features: dict[str, str], feature_order: Sequence[str] = ()) -> str:
    """Features -> canonical string: known features in ``feature_order``, then any others by name."""
    order = [f for f in feature_order if f in features] + sorted(f for f in features if f not in feature_order)
    return ",".join(f"{f}={features[f]}" for f in order)


def feature_values(conditions: Iterable[str], feature: str) -> list[str]:
    """Sorted distinct values of ``feature`` among condition strings (those without it are ignored)."""
    values = {condition_to_features(c).get(feature) for c in conditions}
    return sorted(v for v in values if v is not None)


@dataclass(frozen=True)
class ConditionSet:
    """A parsed condition spec. ``fixed(...)`` for sets shared by all users, ``for_user`` otherwise."""

    kind: str  # "all" | "top" | "list"
    feature: str = "category"  # the query feature for "all" and "top"
    top_k: int = 0  # K for "top"
    listed: tuple[str, ...] = ()  # the conditions of "list", as given
    # merged into every condition (multi-condition queries): (feature, its values); several values (a resolved
    # ANY) cross the set with each of them, (ANY,) is resolved from the model's conditions (``resolve``)
    with_features: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def per_user(self) -> bool:
        return self.kind == "top"

    def feature_names(self) -> set[str]:
        """The features the set's conditions name (for "list": those of every listed condition)."""
        names = {name for name, _ in self.with_features}
        if self.kind == "list":
            return names.union(*(condition_to_features(c) for c in self.listed))
        return names | {self.feature}

    def resolve(self, known_conditions: Sequence[str]) -> ConditionSet:
        """The set with every ``feature=*`` replaced by the values of that feature among ``known_conditions``
        (the model's vocabulary), ``<unk>`` left out; ValueError when the model knows no value of it."""
        resolved = []
        for name, values in self.with_features:
            if values == (ANY,):
                values = tuple(v for v in feature_values(known_conditions, name) if v != UNKNOWN)
                if not values:
                    raise ValueError(f"with_features {name}={ANY}: the model knows no value of feature {name!r}")
            resolved.append((name, values))
        return replace(self, with_features=tuple(resolved))

    def _finish(self, base: Iterable[dict[str, str]], feature_order: Sequence[str]) -> list[str]:
        names = [name for name, _ in self.with_features]
        if any(values == (ANY,) for _, values in self.with_features):
            raise ValueError(f"with_features {ANY} must be resolved against the model's conditions first (resolve)")
        out: list[str] = []
        for features in base:
            for combo in itertools.product(*(values for _, values in self.with_features)):
                merged = dict(features)
                for name, value in zip(names, combo):
                    if name in merged and merged[name] != value:
                        raise ValueError(f"with_features {name}={value} conflicts with condition "
                                         f"{format_condition(features, feature_order)!r}")
                    merged[name] = value
                text = format_condition(merged, feature_order)
                if text not in out:
                    out.append(text)
        return out

    def fixed(self, known_conditions: Sequence[str], feature_order: Sequence[str] = ()) -> list[str]:
        """The conditions every user is queried with (kind "all" or "list").

        ``known_conditions``: the condition strings the model's vocabulary holds (for "all" and ``*``).
        """
        if any(values == (ANY,) for _, values in self.with_features):
            return self.resolve(known_conditions).fixed(known_conditions, feature_order)
        if self.kind == "all":
            values = feature_values(known_conditions, self.feature)
            if not values:
                raise ValueError(f"conditions=all: the model knows no value of feature {self.feature!r}")
            return self._finish(({self.feature: v} for v in values), feature_order)
        if self.kind == "list":
            return self._finish((condition_to_features(c) for c in self.listed), feature_order)
        raise ValueError(f"conditions kind {self.kind!r} depends on the user; use for_user")

    def for_user(self, history_conditions: Sequence[str], feature_order: Sequence[str] = ()) -> list[str]:
        """Top-K query-feature values of one user's history (oldest first), most frequent first."""
        if self.kind != "top":
            raise ValueError(f"for_user applies to conditions=top:K, not {self.kind!r}")
        counts: Counter[str] = Counter()
        last_seen: dict[str, int] = {}
        for pos, cond in enumerate(history_conditions):
            value = condition_to_features(cond).get(self.feature)
            if value is not None:
                counts[value] += 1
                last_seen[value] = pos
        ranked = sorted(counts, key=lambda v: (-counts[v], -last_seen[v], v))[: self.top_k]
        return self._finish(({self.feature: v} for v in ranked), feature_order)


def parse_spec(spec: str, *, feature: str = "category", with_features: str = "") -> ConditionSet:
    """``"all"`` | ``"top:K"`` | ``"list:C1;C2"`` (+ ``with_features`` "f=v,g=w", a value ``*`` = every value
    the model knows) -> ``ConditionSet``."""
    extra = tuple((name, (value,)) for name, value in condition_to_features(with_features).items()) \
        if with_features else ()
    kind, _, arg = str(spec).strip().partition(":")
    if kind == "all" and not arg:
        return ConditionSet("all", feature=feature, with_features=extra)
    if kind == "top":
        if not arg.isdigit() or int(arg) < 1:
            raise ValueError(f"conditions top:K needs K >= 1, got {spec!r}")
        return ConditionSet("top", feature=feature, top_k=int(arg), with_features=extra)
    if kind == "list":
        listed = tuple(c.strip() for c in arg.split(";") if c.strip())
        if not listed:
            raise ValueError(f"conditions list: needs at least one condition, got {spec!r}")
        for c in listed:
            condition_to_features(c)
        return ConditionSet("list", feature=feature, listed=listed, with_features=extra)
    raise ValueError(f"conditions must be all, top:K or list:C1;C2..., got {spec!r}")
