"""The feedback condition feature ``liked`` in the vocabulary: fixed values, stable ids, item conditions."""

from __future__ import annotations

import pytest

from stages.model.vocab import Vocab


def _vocab(categories, features=("category", "liked")) -> Vocab:
    return Vocab.build(range(1, len(categories) + 1), categories, features=features)


def test_liked_values_are_fixed_and_condition_ids_stable_across_days():
    day1 = _vocab(["Comedy", "Drama", "Comedy"])
    day2 = Vocab.from_json(_vocab(["Drama", "Comedy", "Drama"]).to_json())  # another day, read back from JSON
    assert day1.feature_values["liked"] == day2.feature_values["liked"] == ["<unk>", "no", "yes"]
    assert day1.conditions == day2.conditions == [
        "<unk>", "category=Comedy,liked=<unk>", "category=Comedy,liked=no", "category=Comedy,liked=yes",
        "category=Drama,liked=<unk>", "category=Drama,liked=no", "category=Drama,liked=yes"]
    # an unrated behaviour keeps its category: its condition has a row of its own, not the unknown id 0
    assert day1.condition_id("category=Drama,liked=<unk>") == 4
    assert day1.cond_features()[4].tolist() == [2, 0]
    assert day1.cond_features()[3].tolist() == [1, 2]


def test_item_conditions_ask_what_the_user_would_like():
    v = _vocab(["Comedy", "Drama", "Comedy"])
    assert [v.conditions[c] for c in v.item_conditions()[1:]] == [
        "category=Comedy,liked=yes", "category=Drama,liked=yes", "category=Comedy,liked=yes"]
    assert v.conditions[v.item_conditions(liked="no")[2]] == "category=Drama,liked=no"
    assert v.item_conditions()[0] == 0
    order = _vocab(["Comedy"], features=("liked", "category"))
    assert order.conditions[order.item_conditions()[1]] == "liked=yes,category=Comedy"


def test_unknown_feature_is_a_one_line_error():
    with pytest.raises(ValueError, match="condition feature 'taste' unknown; choose from category, scenario, liked"):
        _vocab(["Comedy"], features=("category", "taste"))
