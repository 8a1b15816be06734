"""lum evaluate --consumer lr: train-only rate features (no leakage), the LUM lift, unknown consumers."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest

from stages.cli.app import main
from stages.evaluate.lr import PRIOR, base_features, build, fit, train_and_score
from stages.evaluate.stage import Config, run
from stages.warehouse.facade import Warehouse
from tests.stages.evaluate.test_evaluate import _day, _synthetic_training


def _rows(users, items, labels) -> pa.Table:
    return pa.table({"user_id": pa.array(users, pa.int64()), "item_id": pa.array(items, pa.int64()),
                     "label": pa.array(labels, pa.int32())})


def test_rates_come_from_train_rows_and_leave_the_row_itself_out():
    train = _rows([1, 1, 1, 2], [10, 10, 11, 10], [1, 1, 0, 0])
    test = _rows([1, 3], [10, 12], [0, 1])
    tr, te = base_features(train, test)
    g = 0.5  # global train rate
    # train row 0 (user 1, item 10, label 1): its user's other rows are (1, 0), its item's other rows (1, 0)
    assert tr[0].tolist() == pytest.approx([(1 + PRIOR * g) / (2 + PRIOR), (1 + PRIOR * g) / (2 + PRIOR), np.log1p(2)])
    # test rows see every train row and nothing of the test labels; an unseen user/item gets the global rate
    assert te[0].tolist() == pytest.approx([(2 + PRIOR * g) / (3 + PRIOR), (2 + PRIOR * g) / (3 + PRIOR), np.log1p(3)])
    assert te[1].tolist() == pytest.approx([g, g, 0.0])
    flipped = _rows([1, 3], [10, 12], [1, 0])
    assert np.array_equal(base_features(train, flipped)[1], te)


def test_fit_recovers_a_logistic_model():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, 2))
    y = (rng.random(20_000) < 1 / (1 + np.exp(-(0.5 + 2 * x[:, 0] - x[:, 1])))).astype(float)
    np.testing.assert_allclose(fit(x, y, l2=0.0), [0.5, 2.0, -1.0], atol=0.1)


def test_lr_consumer_lift_when_only_lum_carries_signal(warehouse, tmp_path):
    rng = np.random.default_rng(0)
    wh = Warehouse(warehouse)
    for day in range(1, 6):
        wh.write_partition("dlrm_training", _synthetic_training(rng, day, 700), ds=_day(day))
    out = str(tmp_path / "report")
    summary = run(Config(consumer="lr", train_start=_day(1), train_end=_day(3), test_end=_day(5), out_dir=out),
                  warehouse=warehouse)
    assert summary["consumer"] == "lr" and summary["test_rows"] == 1400
    assert summary["auc_with_lum"] > 0.75 and abs(summary["auc_without_lum"] - 0.5) < 0.08
    assert summary["lift_with_knowledge"] > 0.15 and 0.9 < summary["test_with_knowledge"] < 1.0
    report = json.loads(open(f"{out}/evaluate.json").read())
    assert report["with_lum"]["features"][-1] == "has_knowledge"
    assert "lum_user.lum_item" in report["with_lum"]["features"] and report["without_lum"]["dense_dim"] == 0
    assert [f for f in report["with_lum"]["features"] if f.startswith("lum_user*")] == \
        [f"lum_user*lum_item[{k}]" for k in range(4)]


def test_unknown_consumer_is_a_one_line_error(warehouse, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"unknown consumer 'xgb'; known: dlrm, lr"):
        run(Config(consumer="xgb", train_start=_day(1), train_end=_day(2), test_end=_day(3)), warehouse=warehouse)
    assert main(["evaluate", "--consumer", "xgb", "--train-start", _day(1), "--train-end", _day(2), "--test-end",
                 _day(3), "--out", str(tmp_path), "--warehouse", warehouse]) == 2
    assert capsys.readouterr().err.strip() == "lum: error: unknown consumer 'xgb'; known: dlrm, lr"


def _vector_rows(rng, n: int, user_dim: int = 2, item_dim: int = 2) -> pa.Table:
    """Rows whose label follows u0*i0 - u1*i1: the plain dot u0*i0 + u1*i1 carries none of it."""
    u, i = rng.normal(size=(n, user_dim)), rng.normal(size=(n, item_dim))
    label = (rng.random(n) < 1 / (1 + np.exp(-3 * (u[:, 0] * i[:, 0] - u[:, 1] * i[:, 1])))).astype(np.int32)
    return pa.table({"user_id": pa.array(rng.integers(0, 10**6, n), pa.int64()),
                     "item_id": pa.array(rng.integers(0, 30, n), pa.int64()), "label": pa.array(label, pa.int32()),
                     "lum_user": pa.array(u.tolist(), pa.list_(pa.float32())),
                     "lum_item": pa.array(i.tolist(), pa.list_(pa.float32()))})


def test_the_product_terms_let_a_linear_model_weight_the_knowledge_dimensions():
    rng = np.random.default_rng(1)
    data = build(_vector_rows(rng, 6000), _vector_rows(rng, 3000), ("lum_user", "lum_item"))
    assert data.lum_names == ["lum_user.lum_item", "lum_user*lum_item[0]", "lum_user*lum_item[1]", "has_knowledge"]
    with_terms = train_and_score(data, l2=1.0, use_lum=True)["auc_with_knowledge"]
    dot_only = replace(data, train_lum=data.train_lum[:, [0, 3]], test_lum=data.test_lum[:, [0, 3]],
                       lum_names=["lum_user.lum_item", "has_knowledge"])
    assert with_terms > 0.75 and abs(train_and_score(dot_only, l2=1.0, use_lum=True)["auc_with_knowledge"] - 0.5) < 0.05


def test_vectors_of_different_widths_are_a_one_line_error():
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match=r"lum_user has 2 values per row but lum_item 3; they must come from one model"):
        build(_vector_rows(rng, 50, item_dim=3), _vector_rows(rng, 50), ("lum_user", "lum_item"))
