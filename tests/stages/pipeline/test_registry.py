"""stages.pipeline.registry: every stage listed once, one config builder for every command."""

from __future__ import annotations

import dataclasses
import inspect
import json

import pytest

from stages.cli.parser import BENCHES, INGEST_SOURCES, RUN_STAGES, build_parser
from stages.pipeline import daily, registry


@pytest.mark.parametrize("stage", registry.STAGES, ids=lambda s: s.name)
def test_every_entry_is_a_frozen_config_and_a_run(stage):
    module = stage.load()
    assert dataclasses.is_dataclass(module.Config) and module.Config.__dataclass_params__.frozen
    params = inspect.signature(module.run).parameters
    assert list(params)[0] == "cfg"
    expected = {"ds", "warehouse"} if stage.kind == registry.DAILY else ({"warehouse"} if stage.warehouse else set())
    assert {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY} == expected
    module.Config()  # every option has a default (required ones are checked in run)


def test_the_cli_and_the_daily_runs_read_the_one_list():
    assert RUN_STAGES == daily.STAGES == ("sequences", "pretrain", "infer", "join", "maintain")
    assert registry.get("maintain").kind == registry.DAILY and set(daily.RUNNERS) == set(daily.STAGES)
    assert build_parser().parse_args(["run", "maintain", "--ds", "2000-01-01"]).stage == "maintain"
    assert set(INGEST_SOURCES) == {"movielens-1m", "movielens-100k", "synthetic", "events"}
    assert set(BENCHES) >= {"kernels", "infer", "pack", "join", "query"}
    for name in BENCHES:  # every bench has a --quick preset
        assert isinstance(registry.get(f"bench.{name}").load().QUICK, dict)
    bench = next(a for a in build_parser()._subparsers._group_actions[0].choices["bench"]._actions
                 if a.dest == "name")
    assert tuple(bench.choices) == BENCHES


def test_overrides_mean_the_same_in_every_command(tmp_path):
    # one stage: plain, stage-prefixed and nested spellings of the same option
    for key in ("epochs", "pretrain.epochs", "train.epochs", "pretrain.train.epochs"):
        assert registry.build_config("pretrain", overrides={key: 2}).train.epochs == 2
    # the daily scope: a plain key reaches every daily stage that has it, a prefixed key one stage only
    per_stage = registry.route_overrides(daily.STAGES, {"max_len": 40, "infer.mode": "naive"})
    assert per_stage["sequences"] == {"max_len": 40} and per_stage["pretrain"] == {"max_len": 40}
    assert per_stage["infer"]["mode"] == "naive" and "mode" not in per_stage["join"]
    per_stage = registry.route_overrides(daily.STAGES, {"keep_days.user_knowledge": 30, "row_group_rows": 4096})
    assert per_stage["maintain"] == {"keep_days.user_knowledge": 30, "row_group_rows": 4096}
    assert per_stage["infer"] == {"row_group_rows": 4096} and per_stage["join"] == {}
    assert registry.build_config("maintain", overrides={"keep_days.user_knowledge": 30}).keep_days.user_knowledge == 30
    # a config file's table, then command options, then --set (later wins)
    path = tmp_path / "lum.json"
    path.write_text(json.dumps({"pretrain": {"epochs": 3, "seed": 5}, "infer": {"mode": "naive"}}))
    cfg = registry.build_config("pretrain", config_path=str(path), options={"seed": 6}, overrides={"epochs": 4})
    assert (cfg.train.epochs, cfg.train.seed) == (4, 6)


@pytest.mark.parametrize(("name", "kwargs", "match"), [
    ("pretrain", {"overrides": {"no_such_option": 1}}, "no_such_option"),
    ("pretrain", {"overrides": {"infer.mode": "naive"}}, "stage 'infer' is not run here"),
    ("pretrain", {"overrides": {"bogus.epochs": 1}}, "unknown stage 'bogus'"),
    ("bench.infer", {"options": {"userz": 1}}, "unknown bench.infer option"),
    ("sequences", {"quick": True}, "sequences has no quick preset"),
    ("nope", {}, "unknown stage 'nope'"),
])
def test_bad_options_are_one_line_errors(name, kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        registry.build_config(name, **kwargs)
    assert "\n" not in str(info.value)


def test_run_passes_the_arguments_its_kind_takes():
    with pytest.raises(ValueError, match="ds is required"):
        registry.run("join", registry.build_config("join"), warehouse="unused")
    with pytest.raises(ValueError, match="not a daily stage"):
        registry.run("evaluate", registry.build_config("evaluate"), warehouse="unused", ds="2000-01-01")
