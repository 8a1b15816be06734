"""Query condition sets (stages.core.conditions)."""

from __future__ import annotations

import pytest

from stages.core.conditions import condition_to_features, format_condition, parse_spec

KNOWN = ["category=Action", "category=Comedy", "category=Drama"]
KNOWN2 = [f"category={c},scenario={s}" for c in ("Action", "Comedy") for s in ("click", "rating")]


def test_all_is_every_category_value_sorted():
    assert parse_spec("all").fixed(KNOWN, ("category",)) == KNOWN


def test_all_with_features_makes_multi_condition_queries_in_model_feature_order():
    cset = parse_spec("all", with_features="scenario=rating")
    out = cset.fixed(KNOWN2, ("category", "scenario"))
    assert out == ["category=Action,scenario=rating", "category=Comedy,scenario=rating"]
    assert set(out) <= set(KNOWN2)


def test_list_keeps_order_and_canonicalises_feature_order():
    cset = parse_spec("list:scenario=rating,category=Drama;category=Comedy")
    assert cset.fixed([], ("category", "scenario")) == ["category=Drama,scenario=rating", "category=Comedy"]


def test_top_k_by_frequency_then_recency_then_name():
    history = ["category=Drama", "category=Comedy", "category=Action", "category=Comedy",
               "category=Drama", "category=Horror"]
    cset = parse_spec("top:3")
    # Comedy and Drama: 2 each, Drama seen last -> first; then Horror (1, most recent) before Action
    assert cset.for_user(history, ("category",)) == ["category=Drama", "category=Comedy", "category=Horror"]
    assert parse_spec("top:10").for_user(history[:1], ("category",)) == ["category=Drama"]
    assert parse_spec("top:2").for_user([], ("category",)) == []


def test_top_k_reads_the_feature_out_of_multi_feature_history():
    history = ["category=Comedy,scenario=rating", "category=Comedy,scenario=click", "category=Drama,scenario=click"]
    cset = parse_spec("top:1", with_features="scenario=rating")
    assert cset.for_user(history, ("category", "scenario")) == ["category=Comedy,scenario=rating"]


@pytest.mark.parametrize("spec", ["", "top:0", "top:x", "list:", "some", "all:3", "list:category"])
def test_bad_specs_are_one_line_errors(spec):
    with pytest.raises(ValueError) as err:
        parse_spec(spec)
    assert "\n" not in str(err.value)


def test_parse_and_format_round_trip_and_errors():
    assert condition_to_features("category=Comedy,scenario=rating") == {"category": "Comedy", "scenario": "rating"}
    assert format_condition({"scenario": "x", "category": "y"}, ("category", "scenario")) == "category=y,scenario=x"
    for bad in ("category", "=x", "category=a,category=b"):
        with pytest.raises(ValueError):
            condition_to_features(bad)


def test_all_refuses_a_model_without_the_feature_and_conflicting_with_features():
    with pytest.raises(ValueError, match="no value of feature"):
        parse_spec("all", feature="genre").fixed(KNOWN, ("category",))
    with pytest.raises(ValueError, match="conflicts"):
        parse_spec("list:category=Drama", with_features="category=Comedy").fixed([], ("category",))


KNOWN_LIKED = [f"category={c},liked={v}" for c in ("Action", "Comedy") for v in ("<unk>", "no", "yes")]


def test_star_crosses_every_condition_with_each_known_value_but_unk():
    cset = parse_spec("all", with_features="liked=*")
    assert cset.fixed(KNOWN_LIKED, ("category", "liked")) == [
        "category=Action,liked=no", "category=Action,liked=yes", "category=Comedy,liked=no", "category=Comedy,liked=yes"]
    assert cset.feature_names() == {"category", "liked"}
    top = parse_spec("top:1", with_features="liked=*").resolve(KNOWN_LIKED)
    history = ["category=Comedy,liked=yes", "category=Comedy,liked=<unk>", "category=Action,liked=no"]
    assert top.for_user(history, ("category", "liked")) == ["category=Comedy,liked=no", "category=Comedy,liked=yes"]
    listed = parse_spec("list:category=Drama", with_features="liked=*")
    assert listed.fixed(KNOWN_LIKED, ("category", "liked")) == ["category=Drama,liked=no", "category=Drama,liked=yes"]


def test_star_needs_the_models_values():
    with pytest.raises(ValueError, match=r"liked=\*: the model knows no value of feature 'liked'") as err:
        parse_spec("all", with_features="liked=*").fixed(KNOWN, ("category",))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="resolved"):
        parse_spec("top:2", with_features="liked=*").for_user(["category=Comedy,liked=yes"], ("category", "liked"))
    with pytest.raises(ValueError, match="conflicts"):
        parse_spec("list:category=Drama,liked=yes", with_features="liked=*").fixed(KNOWN_LIKED, ("category", "liked"))
