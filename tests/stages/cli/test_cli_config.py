"""The lum command's shared behaviour: help, one-line errors, config parsing, days."""

from __future__ import annotations

import dataclasses
import json

import pytest

from stages.cli import app as cli
from stages.core.config import from_mapping, has_option, load_config_file, option_names, parse_overrides, to_flat_dict
from stages.core.dates import day_end, day_range, parse_ds, prev_day


@dataclasses.dataclass(frozen=True)
class _Cfg:
    n_layers: int = 2
    lr: float = 1e-3
    use_flag: bool = False
    names: tuple[str, ...] = ("a",)
    tag: str | None = None


@dataclasses.dataclass(frozen=True)
class _Inner:
    width: int = 8
    lr: float = 0.1


@dataclasses.dataclass(frozen=True)
class _Other:
    lr: float = 0.5
    steps: int = 3


@dataclasses.dataclass(frozen=True)
class _Outer:
    net: _Inner = dataclasses.field(default_factory=lambda: _Inner(width=16))
    opt: _Other = dataclasses.field(default_factory=_Other)
    name: str = "x"


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


class Py4JJavaError(Exception):
    """Stands for pyspark's error of a failed Spark job: the Java error's text is in its message."""


JAVA_OOM = ("An error occurred while calling o749.parquet.\n: org.apache.spark.SparkException: Job aborted due to "
            "stage failure: Task 3 in stage 24.0 failed 1 times, most recent failure: Lost task 3.0 (TID 56): "
            "java.lang.OutOfMemoryError: Java heap space\n\tat org.apache.spark.unsafe.memory.HeapMemoryAllocator")


def test_a_spark_job_out_of_memory_is_one_line_naming_the_settings(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("LUM_SPARK_DRIVER_MEMORY", "3g")
    monkeypatch.delenv("LUM_SPARK_SHUFFLE_PARTITIONS", raising=False)

    def failing(args, warehouse):
        try:
            raise Py4JJavaError(JAVA_OOM)
        except Py4JJavaError as exc:  # as a stage wraps it
            raise RuntimeError("sequences ds=2000-01-03 failed") from exc

    monkeypatch.setitem(cli.COMMANDS, "verify", failing)
    code = cli.main(["verify", "--warehouse", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert err[0].startswith("lum: error: Spark ran out of memory (java.lang.OutOfMemoryError: Java heap space)")
    assert "LUM_SPARK_DRIVER_MEMORY (now 3g)" in err[0] and "LUM_SPARK_SHUFFLE_PARTITIONS (now 8)" in err[0]

    def other(args, warehouse):
        raise Py4JJavaError("An error occurred while calling o1.count.\n: java.io.IOException: disk full")

    monkeypatch.setitem(cli.COMMANDS, "verify", other)
    with pytest.raises(Py4JJavaError, match="disk full"):  # any other failure keeps its traceback
        cli.main(["verify", "--warehouse", str(tmp_path)])


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


def test_from_mapping_builds_nested_configs():
    """Dotted keys, unique plain names and tables reach nested configs; untouched nested fields keep the outer
    default (width 16, not _Inner's 8); a later key for the same field wins."""
    assert from_mapping(_Outer, {}) == _Outer()
    cfg = from_mapping(_Outer, {"steps": "7", "net.lr": 0.2, "name": "y"})
    assert cfg == _Outer(net=_Inner(width=16, lr=0.2), opt=_Other(steps=7), name="y")
    assert from_mapping(_Outer, {"net": {"width": 4}, "width": 5}).net == _Inner(width=5, lr=0.1)
    assert from_mapping(_Outer, {"width": 5, "net": {"width": 4}}).net.width == 4
    assert from_mapping(_Outer, {"opt": _Other(lr=0.9), "steps": 1}).opt == _Other(lr=0.9, steps=1)
    with pytest.raises(ValueError, match=r"'lr' is ambiguous: use one of net\.lr, opt\.lr"):
        from_mapping(_Outer, {"lr": 0.3})
    with pytest.raises(ValueError, match="unknown _Outer option.*: net.steps"):
        from_mapping(_Outer, {"net.steps": 1})
    with pytest.raises(ValueError, match="unknown _Outer.net option 'steps'"):
        from_mapping(_Outer, {"net": {"steps": 1}})
    with pytest.raises(ValueError, match="_Outer.opt.steps must be int"):
        from_mapping(_Outer, {"steps": "many"})
    with pytest.raises(ValueError, match="takes a table of _Inner options"):
        from_mapping(_Outer, {"net": 3})
    assert {"width", "steps", "lr", "net", "opt", "name"} == option_names(_Outer)
    assert has_option(_Outer, "steps") and has_option(_Outer, "opt.lr") and has_option(_Outer, "lr")
    assert not has_option(_Outer, "net.steps") and not has_option(_Outer, "depth")


def test_nested_config_from_a_toml_table_and_its_flat_form(tmp_path):
    path = tmp_path / "lum.toml"
    path.write_text('[pretrain]\nname = "z"\nsteps = 2\n[pretrain.net]\nwidth = 32\n')
    cfg = from_mapping(_Outer, {**load_config_file(str(path), "pretrain"), "opt.lr": 0.7})
    assert cfg == _Outer(net=_Inner(width=32), opt=_Other(lr=0.7, steps=2), name="z")

    @dataclasses.dataclass(frozen=True)
    class Flat:
        net: _Inner = dataclasses.field(default_factory=_Inner)
        steps: int = 3

    assert to_flat_dict(Flat()) == {"width": 8, "lr": 0.1, "steps": 3}
    with pytest.raises(ValueError, match="'lr' appears twice"):
        to_flat_dict(_Outer())


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
