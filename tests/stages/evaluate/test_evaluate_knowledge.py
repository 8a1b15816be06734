"""lum evaluate knowledge on a hand-built warehouse whose ranks are worked out below (stages.evaluate.knowledge)."""

from __future__ import annotations

import json
import math

import pytest
from deltalake import write_deltalake

from stages.cli.app import main
from stages.pipeline.registry import run_with
from stages.query.lookup import query_user_knowledge
from stages.query.top_items import top_items
from stages.warehouse.facade import Warehouse
from tests.stages.knowledge_fixtures import K, knowledge_table, write_knowledge_warehouse

# Popularity over 2000-01-02..K: item 1: 5 events, item 2: 3, items 3, 4, 5, 16, 17, 20: 1, item 25: 0 (its
# only event is on 2000-01-01). Ranks of the targets (ties against the target, seen items removed):
#   user 1 (seen 1, 16; target 2):   popularity 0; user categories A=1, B=1 -> A first: 0; within A: 0
#   user 2 (seen 1, 2, 17; target 3): popularity 4 (3, 4, 5, 16, 20 have 1 event); A first: 2 (3, 4, 5); within A: 2
#   user 3 (seen 20; target 25):      popularity 28 (every unseen item >= 0 events); B first: 13; within B: 13
# The knowledge puts every target first.
POP_NDCG = (1 + 1 / math.log2(6)) / 3


def test_knowledge_ranks_the_targets_first_and_the_baselines_match_the_hand_count(warehouse, tmp_path):
    write_knowledge_warehouse(warehouse)
    out = tmp_path / "report.json"
    summary = run_with("evaluate.knowledge", {"ds": K, "out": str(out)}, warehouse=warehouse)
    report = json.loads(out.read_text())
    m = report["metrics"]
    assert report["users_with_knowledge"] == 4 and report["users_evaluated"] == 3 == summary["users_evaluated"]
    assert report["users_acting_after"] == 3 and report["targets_not_in_catalog"] == 0
    assert report["targets_seen_before"] == 0 and report["targets_without_lum_score"] == 0
    assert report["catalog_items"] == 30 and report["items_with_embedding"] == 29
    assert report["popularity_window"] == ["2000-01-02", K]
    assert m["lum"] == {"hr@10": 1.0, "ndcg@10": 1.0} == m["lum_within_category"]
    assert m["popularity"]["hr@10"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["popularity"]["ndcg@10"] == pytest.approx(POP_NDCG, abs=1e-4)
    assert m["user_categories"] == pytest.approx({"hr@10": 2 / 3, "ndcg@10": 0.5}, abs=1e-4)
    assert m["popularity_within_category"] == pytest.approx({"hr@10": 2 / 3, "ndcg@10": 0.5}, abs=1e-4)
    assert report["lum_over_popularity"]["hr@10"] == pytest.approx(1.5, abs=1e-3)
    assert [row["method"] for row in summary["table"]][:2] == ["lum", "popularity"]


def test_small_k_and_small_chunks_give_the_same_ranks(warehouse, tmp_path):
    write_knowledge_warehouse(warehouse)
    out = tmp_path / "r.json"
    run_with("evaluate.knowledge", {"ds": K, "out": str(out), "k": 3, "chunk_users": 1}, warehouse=warehouse)
    m = json.loads(out.read_text())["metrics"]
    assert m["popularity"]["hr@3"] == pytest.approx(1 / 3, abs=1e-4)      # only user 1's rank 0 is < 3
    assert m["user_categories"]["hr@3"] == pytest.approx(2 / 3, abs=1e-4)  # ranks 0 and 2
    assert m["lum"]["hr@3"] == 1.0


def test_a_day_without_later_behaviour_is_a_one_line_error(warehouse, tmp_path):
    write_knowledge_warehouse(warehouse)
    with pytest.raises(ValueError, match="no behaviour after ds=2000-02-03") as err:
        run_with("evaluate.knowledge", {"ds": "2000-02-03", "out": str(tmp_path / "x.json")}, warehouse=warehouse)
    assert "\n" not in str(err.value)


def test_a_partition_written_before_condition_logprob_is_refused(warehouse, tmp_path):
    """An older partition (the table had no condition_logprob then) is refused by the readers that need it; the
    table gains the column with the next write, and lum query of the old rows keeps working."""
    old_day = "2000-01-20"
    old = knowledge_table(old_day, with_logprob=False)
    write_deltalake(f"{warehouse}/user_knowledge", old, partition_by=["ds"])
    write_knowledge_warehouse(warehouse)
    wh = Warehouse(warehouse)
    wh.write_partition("item_knowledge", wh.read("item_knowledge", ds=K).drop_columns(["ds"]), ds=old_day)
    expected = f"user_knowledge ds={old_day} was written without condition_logprob; rerun lum run infer --ds {old_day}"
    with pytest.raises(ValueError) as err:
        run_with("evaluate.knowledge", {"ds": old_day, "out": str(tmp_path / "x.json")}, warehouse=warehouse)
    assert str(err.value) == expected
    with pytest.raises(ValueError) as err:
        top_items(warehouse, user_ids=[1], ds=old_day)
    assert str(err.value) == expected
    assert query_user_knowledge(warehouse, user_ids=[1], ds=old_day).num_rows == 2
    run_with("evaluate.knowledge", {"ds": K, "out": str(tmp_path / "k.json")}, warehouse=warehouse)


def test_cli_knowledge_and_the_old_form_side_by_side(warehouse, tmp_path, capsys):
    write_knowledge_warehouse(warehouse)
    out = tmp_path / "cli.json"
    assert main(["evaluate", "knowledge", "--ds", K, "--out", str(out), "--warehouse", warehouse]) == 0
    text = capsys.readouterr().out
    assert "popularity_within_category" in text and out.exists()
    summary = json.loads(text.strip().splitlines()[-1])
    assert summary["lum_hr@10"] == 1.0 and "table" not in summary
    assert main(["evaluate", "knowledge", "--ds", K, "--train-start", K, "--warehouse", warehouse]) == 2
    assert "takes --ds" in capsys.readouterr().err
    # the old form still parses (and fails on the missing dlrm_training, not on its arguments)
    assert main(["evaluate", "--train-start", "2000-01-01", "--train-end", "2000-01-02", "--test-end",
                 "2000-01-03", "--out", str(tmp_path / "e"), "--warehouse", warehouse]) == 2
    assert "dlrm_training does not exist" in capsys.readouterr().err
    assert main(["evaluate", "--train-start", "2000-01-01", "--warehouse", warehouse]) == 2
    assert "needs --train-start, --train-end and --test-end" in capsys.readouterr().err
