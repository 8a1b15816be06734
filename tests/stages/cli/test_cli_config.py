"""The lum command's shared behaviour: help, one-line errors, config parsing, days."""

from __future__ import annotations

import dataclasses
import json

import pytest

from stages.cli import app as cli
from stages.core.config import from_mapping, load_config_file, parse_overrides
from stages.core.dates import day_end, day_range, parse_ds, prev_day


@dataclasses.dataclass(frozen=True)
class _Cfg:
    n_layers: int = 2
    lr: float = 1e-3
    use_flag: bool = False
    names: tuple[str, ...] = ("a",)
    tag: str | None = None


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("ingest", "run", "backfill", "query", "evaluate", "bench", "demo"):
        assert command in out


def test_bad_day_is_a_one_line_error(capsys, tmp_path):
    code = cli.main(["run", "sequences", "--ds", "2000-13-45", "--warehouse", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "--ds" in err[0] and "2000-13-45" in err[0]
    assert not any(tmp_path.iterdir()), "a failed command must not write anything"


def test_stage_flag_on_wrong_stage_is_refused(capsys, tmp_path):
    code = cli.main(["run", "join", "--ds", "2000-01-02", "--retrain", "--warehouse", str(tmp_path)])
    assert code == 2
    assert "--retrain" in capsys.readouterr().err


def test_from_mapping_coerces_and_rejects_unknown_keys():
    cfg = from_mapping(_Cfg, {"n_layers": "4", "lr": 0.5, "use_flag": "true", "names": "x,y"})
    assert cfg == _Cfg(n_layers=4, lr=0.5, use_flag=True, names=("x", "y"))
    with pytest.raises(ValueError, match="n_layer"):
        from_mapping(_Cfg, {"n_layer": 3})
    with pytest.raises(ValueError, match="_Cfg.n_layers must be int"):
        from_mapping(_Cfg, {"n_layers": "four"})


def test_config_file_sections_and_overrides(tmp_path):
    path = tmp_path / "lum.toml"
    path.write_text('[pretrain]\nn_layers = 3\n[infer]\nmode = "naive"\n')
    assert load_config_file(str(path), "pretrain") == {"n_layers": 3}
    assert load_config_file(str(path), "evaluate") == {}, "another stage's table must not leak in"
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"lr": 0.1}))
    assert load_config_file(str(flat), "pretrain") == {"lr": 0.1}
    assert parse_overrides(["lr=0.01", "name=abc", "flag=true"]) == {"lr": 0.01, "name": "abc", "flag": True}
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["oops"])
    with pytest.raises(ValueError, match="not found"):
        load_config_file(str(tmp_path / "missing.toml"))


def test_days():
    assert day_range("2000-12-30", "2001-01-02") == ["2000-12-30", "2000-12-31", "2001-01-01", "2001-01-02"]
    assert prev_day("2001-03-01") == "2001-02-28"
    assert day_end("2000-12-31").isoformat() == "2001-01-01T00:00:00+00:00"
    with pytest.raises(ValueError, match="end 2000-01-01 is before start"):
        day_range("2000-01-02", "2000-01-01")
    with pytest.raises(ValueError):
        parse_ds("2000-02-30")
