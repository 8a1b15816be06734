"""The knowledge score against a brute-force reference, ranks and top-k (stages.query.score), and lum query
--top-items on the hand-built warehouse of tests/stages/knowledge_fixtures.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest

from stages.cli.app import main
from stages.query.catalog import read_catalog, read_users
from stages.query.score import hit_ndcg, knowledge_scores, target_ranks, top_k
from stages.query.top_items import top_items
from tests.stages.knowledge_fixtures import K, knowledge_table, write_knowledge_warehouse


def brute_force(user_emb, user_has, logprob, temperature, item_emb, item_col):
    U, n_items = user_emb.shape[0], item_emb.shape[0]
    out = np.full((U, n_items), -np.inf)
    for u in range(U):
        for i in range(n_items):
            c = item_col[i]
            if c < 0 or not user_has[u, c]:
                continue
            same = [j for j in range(n_items) if item_col[j] == c]
            norm = math.log(sum(math.exp(float(user_emb[u, c] @ item_emb[j]) / temperature[u]) for j in same))
            out[u, i] = logprob[u, c] + float(user_emb[u, c] @ item_emb[i]) / temperature[u] - norm
    return out


def test_scores_match_the_brute_force_reference():
    rng = np.random.default_rng(0)
    U, C, D, n_items = 5, 3, 4, 17
    emb = rng.normal(size=(U, C, D))
    has = rng.random((U, C)) > 0.2
    logprob = np.log(rng.dirichlet(np.ones(C), size=U))
    temperature = rng.uniform(0.05, 1.0, U)
    items = rng.normal(size=(n_items, D))
    col = rng.integers(-1, C, n_items)
    got = knowledge_scores(emb, has, logprob, temperature, items, col)
    want = brute_force(emb, has, logprob, temperature, items, col)
    assert np.array_equal(np.isneginf(got), np.isneginf(want)) and np.isneginf(got[:, col < 0]).all()
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-9, atol=1e-9)
    # within a column the item terms are a distribution: exp(score - logprob) sums to 1 where the user has it
    for u in range(U):
        for c in range(C):
            if has[u, c] and (col == c).any():
                assert np.exp(got[u, col == c] - logprob[u, c]).sum() == pytest.approx(1.0)


def test_scores_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match="item_emb"):
        knowledge_scores(np.zeros((1, 2, 3)), np.ones((1, 2), bool), np.zeros((1, 2)), np.ones(1),
                         np.zeros((4, 2)), np.zeros(4, int))


def test_ranks_ties_against_the_target_exclusions_and_misses():
    scores = np.array([[3.0, 1.0, 3.0, 2.0], [0.0, 1.0, 2.0, -np.inf], [5.0, 4.0, 3.0, 2.0]])
    excluded = np.zeros_like(scores, bool)
    excluded[2, 0] = True
    ranks = target_ranks(scores, np.array([0, 3, 0]), excluded)
    assert ranks.tolist() == [1, 4, 4]  # a tie above; -inf target; excluded target
    assert target_ranks(scores, np.array([3, 2, 1])).tolist() == [2, 0, 1]
    hr, ndcg = hit_ndcg(np.array([0, 1, 10]), 10)
    assert hr == pytest.approx(2 / 3) and ndcg == pytest.approx((1 + 1 / math.log2(3)) / 3)
    cols, best = top_k(scores, 2, excluded)
    assert cols.tolist() == [[0, 2], [2, 1], [1, 2]] and best[2].tolist() == [4.0, 3.0]


def test_top_items_of_a_user_and_exclude_seen(warehouse):
    wh = write_knowledge_warehouse(warehouse)
    rows = top_items(warehouse, user_ids=[1, 2, 99], ds=K, k=3)
    assert rows.column("user_id").to_pylist() == [1, 1, 1, 2, 2, 2]  # 99: no knowledge, no rows
    first = rows.slice(0, 3).to_pylist()
    assert [r["item_id"] for r in first][0] == 2 and first[0]["category"] == "A"
    assert first[0]["log_p_category"] == pytest.approx(math.log(0.9), abs=1e-6)
    assert first[0]["score"] == pytest.approx(first[0]["log_p_category"] + first[0]["log_p_item"])
    assert rows.slice(3, 1).to_pylist()[0]["item_id"] == 3
    ts = pa.array([[0, 0]], pa.list_(pa.timestamp("us", tz="UTC")))
    wh.write_partition("user_sequences", pa.table({
        "user_id": pa.array([1], pa.int64()), "item_ids": pa.array([[1, 2]], pa.list_(pa.int64())),
        "conditions": [["category=A", "category=A"]], "ts": ts, "ratings": pa.array([[4.0, 4.0]], pa.list_(pa.float32())),
        "history_len": pa.array([2], pa.int32()), "total_events": pa.array([2], pa.int64())}), ds=K)
    seen_out = top_items(warehouse, user_ids=[1], ds=K, k=3, exclude_seen=True).column("item_id").to_pylist()
    assert 2 not in seen_out and 1 not in seen_out and len(seen_out) == 3
    for name in ("item_knowledge", "user_knowledge"):  # a day with knowledge but no user_sequences
        wh.write_partition(name, wh.read(name, ds=K).drop_columns(["ds"]), ds="2000-01-30")
    with pytest.raises(ValueError, match="user_sequences has no partition ds=2000-01-30"):
        top_items(warehouse, user_ids=[1], ds="2000-01-30", exclude_seen=True)


def test_cli_top_items(warehouse, capsys):
    write_knowledge_warehouse(warehouse)
    assert main(["query", "--ds", K, "--user-id", "3", "--top-items", "2", "--warehouse", warehouse]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "log_p_category" in lines[0] and lines[2].split()[2] == "25"  # user_id, rank, item_id
    summary = json.loads(lines[-1])
    assert summary["rows"] == 2 and summary["ds"] == K and summary["top_items"] == 2
    assert main(["query", "--user-id", "99", "--top-items", "2", "--warehouse", warehouse]) == 0  # unknown user
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1])["rows"] == 0 and "no knowledge" in captured.err
    assert main(["query", "--user-id", "3", "--exclude-seen", "--warehouse", warehouse]) == 2
    assert "--exclude-seen applies with --top-items" in capsys.readouterr().err
    assert main(["query", "--user-id", "3", "--top-items", "0", "--warehouse", warehouse]) == 2
    assert "positive integer" in capsys.readouterr().err


def test_liked_knowledge_scores_with_its_liked_yes_rows(warehouse, tmp_path):
    """A `liked` model writes liked=yes and liked=no rows per category: the score uses the yes rows (what the user
    would like), so they give exactly the plain-category arrays, whatever the no rows hold."""
    plain = write_knowledge_warehouse(warehouse)
    t = knowledge_table()
    yes = t.set_column(t.column_names.index("condition"), "condition",
                       pa.array([c + ",liked=yes" for c in t.column("condition").to_pylist()]))
    no = t.set_column(t.column_names.index("condition"), "condition",
                      pa.array([c + ",liked=no" for c in t.column("condition").to_pylist()]))
    no = no.set_column(no.column_names.index("embedding"), "embedding",
                       pa.FixedSizeListArray.from_arrays(pa.array(np.ones(no.num_rows * 30, np.float32)), 30))
    liked = write_knowledge_warehouse(str(tmp_path / "liked"))
    liked.write_partition("user_knowledge", pa.concat_tables([yes, no]), ds=K)
    a = read_users(plain, K, read_catalog(plain, K))
    b = read_users(liked, K, read_catalog(liked, K))
    np.testing.assert_array_equal(a.embedding, b.embedding)
    np.testing.assert_array_equal(a.logprob, b.logprob)
    np.testing.assert_array_equal(a.has, b.has)
