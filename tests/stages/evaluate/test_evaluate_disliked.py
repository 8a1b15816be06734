"""The evaluate consumers pick up ``lum_target_match_disliked`` (knowledge with ``liked``) where rows have it."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from stages.evaluate.features import LUM_COLUMNS, dense_lum, present_lum_columns
from stages.evaluate.stage import Config, run
from stages.warehouse.facade import Warehouse
from tests.stages.evaluate.test_evaluate import _day, _synthetic_training


def _with_disliked(table: pa.Table, rng, *, signal: bool) -> pa.Table:
    """A disliked similarity that carries the label (signal) or is null everywhere (knowledge without liked)."""
    label = table.column("label").to_numpy()
    if not signal:
        return table.append_column("lum_target_match_disliked", pa.nulls(table.num_rows, pa.float32()))
    values = np.where(label == 1, -0.5, 0.5) + rng.normal(scale=0.3, size=table.num_rows)
    return table.append_column("lum_target_match_disliked", pa.array(values.astype(np.float32)))


def test_present_columns_drop_the_disliked_one_when_no_row_has_it():
    full = pa.table({"lum_target_match": [0.1, None], "lum_target_match_disliked": pa.array([None, 0.3], pa.float32())})
    empty = pa.table({"lum_target_match": [0.1], "lum_target_match_disliked": pa.nulls(1, pa.float32())})
    older = pa.table({"lum_target_match": [0.1]})
    assert present_lum_columns(LUM_COLUMNS, empty, full) == LUM_COLUMNS
    assert present_lum_columns(LUM_COLUMNS, empty, older) == LUM_COLUMNS[:-1]
    dense = dense_lum(full, ("lum_target_match", "lum_target_match_disliked"), {})
    assert dense.tolist() == [[np.float32(0.1), 0.0, 1.0], [0.0, np.float32(0.3), 1.0]]  # nulls -> 0, then the flag


def test_lr_uses_the_disliked_similarity_where_present(warehouse, tmp_path):
    wh = Warehouse(warehouse)
    for signal in (True, False):
        rng = np.random.default_rng(1)
        for day in range(1, 6):
            rows = _synthetic_training(rng, day, 500)
            if signal:  # the label's signal is in the disliked similarity only
                rows = rows.drop_columns(["lum_target_match"]).append_column(
                    "lum_target_match", pa.nulls(rows.num_rows, pa.float32()))
            wh.write_partition("dlrm_training", _with_disliked(rows, rng, signal=signal), ds=_day(day))
        out = str(tmp_path / f"report-{signal}")
        summary = run(Config(consumer="lr", train_start=_day(1), train_end=_day(3), test_end=_day(5), out_dir=out,
                             lum_columns=("lum_target_match", "lum_target_match_disliked")), warehouse=warehouse)
        report = json.loads(open(f"{out}/evaluate.json").read())
        features = report["with_lum"]["features"]
        if signal:
            assert "lum_target_match_disliked" in features and summary["lift"] > 0.2
            assert report["with_lum"]["weights"]["lum_target_match_disliked"] < 0  # disliked: less likely positive
        else:
            assert "lum_target_match_disliked" not in features
            assert report["config"]["lum_columns"] == ["lum_target_match"]
