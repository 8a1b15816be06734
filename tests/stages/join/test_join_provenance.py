"""Join provenance and --reproduce: every dlrm_training commit records its pinned input versions; a
partition rebuilt from them after later days were written and every input was overwritten is bit-for-bit
the written one (one-day and range commits); no record, a replaced partition and a vacuumed input are
one-line errors; the exact comparison itself."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pyarrow as pa
import pytest

from tests.stages.join.test_join import items_table, knowledge, samples_table
from tests.stages.join.test_join_range import make_range_warehouse

INPUTS = ("dlrm_samples", "user_knowledge", "item_knowledge", "items")


def record_of(wh, ds: str) -> tuple[int, dict]:
    from stages.join.provenance import read_record

    return read_record(wh, "dlrm_training", ds)


def overwrite_inputs(wh) -> None:
    """Later runs replace every input the recorded joins read (new versions, old files superseded)."""
    wh.write_partition("dlrm_samples", samples_table("2001-01-05", seed=42), ds="2001-01-05")
    wh.write_partition("dlrm_samples", samples_table("2001-01-03", seed=43), ds="2001-01-03")
    for day in ("2001-01-02", "2001-01-04"):
        uk, ik = knowledge(day, seed=77, version="lum-rerun", scale=3.0)
        wh.write_partition("user_knowledge", uk, ds=day)
        wh.write_partition("item_knowledge", ik, ds=day)
    items = items_table()
    wh.write_table("items", items.set_column(2, "category", pa.array(["C"] * items.num_rows)))


@pytest.fixture(scope="module")
def history_warehouse(spark, tmp_path_factory) -> dict:
    """dlrm_training 01-03 (one-day run), then the later days 01-05..01-06 (one range commit), then every
    input overwritten. Read-only: copy before writing."""
    from stages.join.range import run_range
    from stages.join.stage import Config, run

    path = str(tmp_path_factory.mktemp("provenance") / "warehouse")
    wh = make_range_warehouse(path)
    pinned = {name: wh.version(name) for name in INPUTS}
    single = run(Config(), ds="2001-01-03", warehouse=path)
    # 2001-01-06 has the knowledge of 01-04, not of 01-05: the range join allows it explicitly
    ranged = run_range(Config(allow_stale_knowledge=True), start="2001-01-05", end="2001-01-06", warehouse=path)
    rows = {d: wh.read("dlrm_training", ds=d) for d in ("2001-01-03", "2001-01-05", "2001-01-06")}
    overwrite_inputs(wh)
    return {"path": path, "pinned": pinned, "single": single, "ranged": ranged, "rows": rows}


@pytest.mark.slow
def test_each_commit_records_its_inputs(history_warehouse):
    from stages.join.provenance import config_hash
    from stages.warehouse.facade import Warehouse

    wh, pinned = Warehouse(history_warehouse["path"]), history_warehouse["pinned"]
    single, ranged = history_warehouse["single"], history_warehouse["ranged"]
    assert single["inputs"] == pinned
    version, rec = record_of(wh, "2001-01-03")
    assert version == 0  # the commit that created the table with 01-03 (then came the table-metadata commit)
    assert rec["days"] == ["2001-01-03"] and rec["inputs"] == pinned
    assert rec["knowledge_ds"] == "2001-01-02" and rec["model_version"] == "lum-2001-01-02"
    assert rec["fallback"] is None and rec["config_hash"] == single["config_hash"] == config_hash(rec["config"])
    assert rec["config"]["lag_days"] == 1 and rec["config"]["spec"]["samples_table"] == "dlrm_samples"
    # the range commit: one record for its one group, true for both of its days
    (group,) = ranged["groups"]
    for day in ("2001-01-05", "2001-01-06"):
        v, r = record_of(wh, day)
        assert r["days"] == ["2001-01-05", "2001-01-06"] and r["inputs"] == pinned
        assert r["knowledge_ds"] == group["knowledge_ds"] == "2001-01-04" and r["model_version"] == "lum-2001-01-04"
    assert all(wh.version(name) > pinned[name] for name in INPUTS)
    assert "lum.provenance" not in wh.table_metadata("dlrm_training")  # commit metadata, not table config


@pytest.mark.slow
@pytest.mark.parametrize("day", ["2001-01-03", "2001-01-06"])
def test_reproduce_is_bit_for_bit_after_later_days_and_overwritten_inputs(history_warehouse, day, capsys):
    from stages.cli.app import main
    from stages.warehouse.facade import Warehouse

    path = history_warehouse["path"]
    wh = Warehouse(path)
    before = wh.version("dlrm_training")
    assert main(["run", "join", "--ds", day, "--reproduce", "--warehouse", path]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["reproduced"] is True and summary["equal"] is True and summary["difference"] is None
    assert summary["rows"] == 11 and summary["inputs"] == history_warehouse["pinned"]
    assert summary["config_matches_current"] is True
    assert wh.version("dlrm_training") == before  # verifying writes nothing
    assert wh.read("dlrm_training", ds=day).equals(history_warehouse["rows"][day])
    # the same join today reads the overwritten inputs: the pinned rebuild was not a coincidence
    current = wh.read("user_knowledge", ds="2001-01-04").column("model_version").unique().to_pylist()
    assert current == ["lum-rerun"]


@pytest.mark.slow
def test_partition_without_provenance_is_an_error(spark, history_warehouse, copy_warehouse, capsys):
    from stages.cli.app import main
    from stages.warehouse.facade import Warehouse

    path = copy_warehouse(history_warehouse["path"])
    wh = Warehouse(path)
    # a writer that records nothing replaces 01-05 (as joins did before they recorded provenance)
    df = wh.read_spark(spark, "dlrm_training", ds="2001-01-05")
    wh.write_spark_partition("dlrm_training", df.localCheckpoint(), ds="2001-01-05")
    assert main(["run", "join", "--ds", "2001-01-05", "--reproduce", "--warehouse", path]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "partition ds=2001-01-05 was replaced after version" in err[0]
    # a table whose commits never recorded any
    fresh = copy_warehouse(history_warehouse["path"])
    shutil.rmtree(Warehouse(fresh).table_uri("dlrm_training"))
    Warehouse(fresh).write_partition("dlrm_training", history_warehouse["rows"]["2001-01-03"], ds="2001-01-03",
                                     dim=4)
    assert main(["run", "join", "--ds", "2001-01-03", "--reproduce", "--warehouse", fresh]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dlrm_training[2001-01-03] has no recorded provenance" in err[0]
    assert main(["run", "join", "--ds", "2001-01-09", "--reproduce", "--warehouse", fresh]) == 2
    assert "dlrm_training has no partition ds=2001-01-09" in capsys.readouterr().err


@pytest.mark.slow
def test_vacuumed_input_version_is_an_error_naming_table_version_and_retention(history_warehouse,
                                                                                copy_warehouse, monkeypatch):
    from stages.join.reproduce import reproduce
    from stages.join.stage import Config
    from stages.warehouse.facade import Warehouse

    path = copy_warehouse(history_warehouse["path"])
    wh = Warehouse(path)
    monkeypatch.setenv("LUM_VACUUM_RETENTION_HOURS", "0")
    assert wh.vacuum("items")  # the recorded items version's file is superseded: gone now
    pinned = history_warehouse["pinned"]["items"]
    with pytest.raises(ValueError, match=f"table items version {pinned}: 1 data file\\(s\\) are gone .*"
                                         "LUM_VACUUM_RETENTION_HOURS = 0"):
        reproduce(Config(), ds="2001-01-03", warehouse=path)


@pytest.mark.parametrize("argv, match", [
    (["run", "join", "--start", "2001-01-02", "--end", "2001-01-03", "--reproduce"], "--reproduce applies"),
    (["run", "infer", "--ds", "2001-01-02", "--reproduce"], "--reproduce applies"),
])
def test_cli_reproduce_arguments(argv, match, warehouse, capsys):
    from stages.cli.app import main

    assert main(argv + ["--warehouse", warehouse]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0]


def _table(floats, lists, keys=(1, 2, 3)) -> pa.Table:
    return pa.table({"user_id": pa.array(keys, pa.int64()), "item_id": pa.array([5, 5, 5], pa.int64()),
                     "ts": pa.array([0, 0, 0], pa.int64()), "x": pa.array(floats, pa.float32()),
                     "v": pa.array(lists, pa.list_(pa.float32(), 2))})


def test_first_difference_is_exact():
    from stages.join.reproduce import first_difference

    key = ("user_id", "item_id", "ts")
    base = _table([1.0, math.nan, None], [[1.0, 2.0], None, [0.0, 3.0]])
    assert first_difference(base, base, key) is None  # NaN equals the same NaN, nulls equal nulls
    shuffled = base.take([2, 0, 1]).select(["v", "x", "ts", "item_id", "user_id"])
    assert first_difference(shuffled, base, key) is None  # row and column order do not matter
    widened = base.set_column(3, "x", base.column("x").cast(pa.float64()))
    assert first_difference(widened, base, key) is None  # cast to the recorded types (exact for float32)
    neg_zero = _table([1.0, math.nan, None], [[1.0, 2.0], None, [-0.0, 3.0]])
    assert "column v differs, first at {'user_id': 3" in first_difference(neg_zero, base, key)
    ulp = np.nextafter(np.float32(1.0), np.float32(2.0))
    off = _table([float(ulp), math.nan, None], [[1.0, 2.0], None, [0.0, 3.0]])
    assert "column x differs, first at {'user_id': 1" in first_difference(off, base, key)
    variable = base.set_column(4, "v", pa.array([[1.0, 2.0], None, [0.0, 3.0]], pa.list_(pa.float32())))
    assert first_difference(variable, base, key) is None  # Spark's list<float> against the stored fixed size
    empty = pa.chunked_array([pa.array([None] * 2, pa.list_(pa.float32())), pa.array([None], pa.list_(pa.float32()))])
    nulls = base.set_column(4, "v", pa.array([None] * 3, pa.list_(pa.float32(), 2)))
    assert first_difference(nulls.set_column(4, "v", empty), nulls, key) is None  # all-null chunks, no values
    assert "column v differs" in first_difference(variable, nulls, key)
    assert "rows rebuilt" in first_difference(base.slice(0, 2), base, key)
    assert "columns" in first_difference(base.drop_columns(["x"]), base, key)
