"""lum backfill: day order, resumability (skip complete days, restart at the first missing stage),
--force, and (slow) the real stages twice over two ML-100K days leaving identical tables."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from stages.cli.app import main
from stages.pipeline import backfill, daily

TINY = str(Path(__file__).resolve().parents[2] / "dags" / "tiny.toml")
DAYS = ("1998-03-01", "1998-03-02")


@pytest.fixture
def fake_stages(monkeypatch):
    """Runners that record calls and mark their output complete (in memory)."""
    done: set[tuple[str, str]] = set()
    calls: list[tuple[str, str]] = []

    def runner(stage):
        def run(ds, warehouse, config_path=None, overrides=None):
            calls.append((stage, ds))
            done.add((stage, ds))
            return {"stage": stage, "ds": ds, "seconds": 0.0}
        return run

    monkeypatch.setattr(daily, "RUNNERS", {s: runner(s) for s in daily.STAGES})
    monkeypatch.setattr(backfill, "COMPLETE", {s: (lambda wh, ds, s=s: (s, ds) in done) for s in daily.STAGES})
    return done, calls


def test_runs_days_in_order_then_skips(fake_stages, warehouse):
    done, calls = fake_stages
    out = backfill.run_backfill(start="2000-01-30", end="2000-02-01", warehouse=warehouse)
    assert out["ran"] == ["2000-01-30", "2000-01-31", "2000-02-01"] and out["stage_runs"] == 15
    assert calls[:5] == [(s, "2000-01-30") for s in daily.STAGES]
    assert [ds for _, ds in calls] == sorted(ds for _, ds in calls)
    calls.clear()
    again = backfill.run_backfill(start="2000-01-30", end="2000-02-01", warehouse=warehouse)
    assert again["skipped"] == ["2000-01-30", "2000-01-31", "2000-02-01"] and calls == []
    forced = backfill.run_backfill(start="2000-01-31", end="2000-01-31", force=True, warehouse=warehouse)
    assert forced["ran"] == ["2000-01-31"] and calls == [(s, "2000-01-31") for s in daily.STAGES]


def test_resumes_at_first_incomplete_stage(fake_stages, warehouse):
    done, calls = fake_stages
    done.update({("sequences", "2000-01-01"), ("pretrain", "2000-01-01"), ("join", "2000-01-01")})
    out = backfill.run_backfill(start="2000-01-01", end="2000-01-01", warehouse=warehouse)
    assert calls == [("infer", "2000-01-01"), ("join", "2000-01-01"), ("maintain", "2000-01-01")]
    assert out["runs"][0]["seconds"].keys() == {"infer", "join", "maintain"}


def test_join_stretch_then_each_days_maintenance(fake_stages, warehouse, monkeypatch):
    """Days that need only join and maintain: one range join, then maintain day by day, in order."""
    done, calls = fake_stages
    days = ["2000-01-01", "2000-01-02", "2000-01-03"]
    done.update((s, d) for s in ("sequences", "pretrain", "infer") for d in days)
    monkeypatch.setattr(backfill, "_run_join_range", lambda start, end, *a: calls.append(("range", start, end))
                        or done.update(("join", d) for d in days) or {"seconds": 3.0})
    out = backfill.run_backfill(start=days[0], end=days[-1], warehouse=warehouse)
    assert calls == [("range", days[0], days[-1])] + [("maintain", d) for d in days]
    assert out["runs"] == [{"ds": d, "seconds": {"join": 1.0, "maintain": 0.0}} for d in days]
    assert out["stage_runs"] == 6 and len(out["join_ranges"]) == 1


def test_maintain_is_complete_when_every_maintained_table_records_the_day(warehouse):
    """``maintain`` has no output of its own: each table it finished records the day (lum.maintained_through)."""
    import numpy as np

    from stages.maintain.plan import MARKER
    from stages.warehouse.facade import Warehouse
    from tests.stages.maintain.test_maintain import knowledge, training

    wh = Warehouse(warehouse)
    complete = backfill.COMPLETE["maintain"]
    wh.write_partition("user_knowledge", knowledge(np.arange(1, 3), "2000-01-02"), ds="2000-01-02")
    wh.write_partition("dlrm_training", training(np.arange(1, 3), "2000-01-02"), ds="2000-01-02")
    assert not complete(warehouse, "2000-01-02")  # no table records a day
    wh.set_table_metadata("user_knowledge", {MARKER: "2000-01-02"})
    assert complete(warehouse, "2000-01-02") and complete(warehouse, "2000-01-01")
    assert not complete(warehouse, "2000-01-03")
    wh.set_table_metadata("dlrm_training", {MARKER: "2000-01-01"})  # a run stopped before this table's record
    assert not complete(warehouse, "2000-01-02")


def test_stage_subset_runs_in_pipeline_order(fake_stages, warehouse):
    _, calls = fake_stages
    backfill.run_backfill(start="2000-01-01", end="2000-01-01", stages=["join", "sequences"], warehouse=warehouse)
    assert calls == [("sequences", "2000-01-01"), ("join", "2000-01-01")]


@pytest.mark.parametrize("kwargs, match", [
    ({"start": "2000-01-02", "end": "2000-01-01"}, "before start"),
    ({"start": "2000-1-1", "end": "2000-01-02"}, "start must be YYYY-MM-DD"),
    ({"start": "2000-01-01", "end": "2000-01-01", "stages": ["train"]}, "unknown stage 'train'"),
    ({"start": "2000-01-01", "end": "2000-01-01", "overrides": {"no_such_option": 1}}, "no_such_option"),
    ({"start": "2000-01-01", "end": "2000-01-01", "overrides": {"bogus.max_len": 1}}, "unknown stage 'bogus'"),
])
def test_bad_arguments_fail_before_running(fake_stages, warehouse, kwargs, match):
    _, calls = fake_stages
    with pytest.raises(ValueError, match=match):
        backfill.run_backfill(warehouse=warehouse, **kwargs)
    assert calls == []


def test_overrides_reach_the_right_stage_configs():
    per_stage = daily.split_overrides({"max_len": 40, "pretrain.max_steps": 3})
    assert per_stage["sequences"] == {"max_len": 40} and per_stage["pretrain"] == {"max_len": 40, "max_steps": 3}
    assert per_stage["infer"] == {} and per_stage["join"] == {}
    cfg = daily.stage_config("pretrain", TINY, {"pretrain.max_steps": 3})
    assert cfg.train.max_steps == 3 and cfg.model.d_model == 16  # file value kept, override applied
    assert daily.stage_config("join", TINY).__class__.__name__ == "Config"  # no [join] table: defaults


def _tables(warehouse: str) -> dict[str, list[dict]]:
    from stages.warehouse.facade import Warehouse

    wh = Warehouse(warehouse)
    out = {}
    for name in ("user_sequences", "user_knowledge", "item_knowledge", "dlrm_training"):
        table = wh.read(name)
        keys = [c for c in ("ds", "user_id", "item_id", "condition", "ts")
                if c in table.column_names and not pa.types.is_list(table.schema.field(c).type)]
        out[name] = table.sort_by([(k, "ascending") for k in keys]).to_pylist()
    return out


@pytest.mark.slow
def test_real_backfill_twice_is_identical_and_resumable(ml100k_warehouse, copy_warehouse, capsys):
    from tests.conftest import tree_snapshot

    wh = copy_warehouse(ml100k_warehouse)
    args = ["backfill", "--warehouse", wh, "--start", DAYS[0], "--end", DAYS[1], "--config", TINY]
    assert main(args) == 2  # no knowledge of the day before the range: refused before anything runs
    assert "needs the knowledge of 1998-02-28" in capsys.readouterr().err
    assert not Path(wh, "user_sequences").exists()
    args += ["--set", "join.allow_stale_knowledge=true"]  # a first-ever day: null LUM columns
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["ran"] == list(DAYS) and first["stage_runs"] == 10
    tables = _tables(wh)
    assert {r["ds"] for r in tables["user_knowledge"]} == set(DAYS)
    assert {r["ds"] for r in tables["dlrm_training"]} == set(DAYS)

    files = tree_snapshot(wh)
    assert main(args) == 0  # resumed: everything complete, nothing runs, not one byte changes
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert second["skipped"] == list(DAYS) and second["stage_runs"] == 0
    assert tree_snapshot(wh) == files

    assert main(args + ["--force"]) == 0  # rerun both days: same rows, new table versions
    forced = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert forced["ran"] == list(DAYS) and forced["stage_runs"] == 10
    assert _tables(wh) == tables
