"""`lum verify` on a tiny trained warehouse: healthy, then each corruption named by verify and refused by the
stage that meets it (a deleted data file, a truncated run checkpoint, a corrupt model file, bad rows)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake

from stages.cli.app import main
from stages.model import store as model_store
from stages.pipeline import registry
from stages.pretrain import stage as pretrain
from stages.training import loop as train_loop
from stages.verify.checks import _schema_problems
from stages.warehouse.facade import Warehouse
from tests.stages.pretrain_fixtures import TINY, make_warehouse

D1, D2 = "2000-01-01", "2000-01-02"
PRETRAIN = {**TINY, "threads": 1, "device": "cpu"}
INFER = {"device": "cpu", "chunk_users": 8}


@pytest.fixture(scope="module")
def tiny_wh(tmp_path_factory) -> str:
    """items + user_sequences for two days; model lum-D1 and the knowledge of D1 (day 2 not run yet)."""
    path = str(tmp_path_factory.mktemp("verify") / "warehouse")
    assert make_warehouse(path, days=2) == [D1, D2]
    registry.run_with("pretrain", PRETRAIN, warehouse=path, ds=D1)
    registry.run_with("infer", INFER, warehouse=path, ds=D1)
    return path


def verify(path: str, **options) -> dict:
    return registry.run_with("verify", options, warehouse=path)


def rows(report: dict, status: str) -> list[dict]:
    return [f for f in report["findings"] if f["status"] == status]


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["verify", "-q", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_healthy_warehouse_passes_and_names_the_unfinished_day(tiny_wh, capsys):
    report = verify(tiny_wh)
    assert report["ok"] and report["counts"]["error"] == 0, rows(report, "error")
    checks = {(f["table"], f["check"]) for f in rows(report, "ok")}
    assert {("user_sequences", "files"), ("user_knowledge", "keys"), ("item_knowledge", "finite"),
            ("models/lum", "model")} <= checks
    warned = {(f["table"], f["ds"]) for f in rows(report, "warn")}
    assert warned == {("models/lum", D2), ("user_knowledge", D2), ("item_knowledge", D2)}  # day 2: sequences only
    assert not verify(tiny_wh, strict=True)["ok"]
    assert verify(tiny_wh, ds=D1)["counts"]["warn"] == 0
    deep = verify(tiny_wh, deep=True)
    assert deep["ok"] and {f["table"] for f in rows(deep, "ok") if f["check"] == "validate"} == {
        "events", "items", "user_sequences", "user_knowledge", "item_knowledge"}

    code, out, err = cli(capsys, "--warehouse", tiny_wh)
    assert code == 0 and err == ""
    lines = out.strip().splitlines()
    assert lines[0].split() == ["table", "ds", "check", "status", "detail"]
    summary = json.loads(lines[-1])
    assert summary["ok"] is True and summary["counts"]["warn"] == 3 and "findings" not in summary
    code, out, err = cli(capsys, "--warehouse", tiny_wh, "--set", "strict=true")
    assert code == 2 and json.loads(out.strip().splitlines()[-1])["ok"] is False
    assert err.startswith("lum: error: verify: 0 error(s); first: models/lum 2000-01-02 complete: no model version")


def test_deleted_data_file_named_by_verify_and_refused_by_pretrain(tiny_wh, copy_warehouse, capsys):
    wh = copy_warehouse(tiny_wh)
    gone = next(Path(wh, "user_sequences", f"ds={D1}").glob("*.parquet"))
    gone.unlink()
    report = verify(wh)
    (err_row,) = rows(report, "error")
    assert (err_row["table"], err_row["ds"], err_row["check"]) == ("user_sequences", D1, "files")
    assert err_row["detail"] == f"ds={D1}/{gone.name}: data file is missing (the Delta log names it)"
    assert {(f["check"], f["ds"]) for f in rows(report, "skipped")} == {("keys", D1)}
    code, out, err = cli(capsys, "--warehouse", wh)
    assert code == 2 and gone.name in err and err.count("\n") == 1
    with pytest.raises(ValueError, match=rf"^table user_sequences: data file ds={D1}/{gone.name} is missing"):
        registry.run_with("pretrain", {**PRETRAIN, "retrain": True}, warehouse=wh, ds=D1)


def test_truncated_run_checkpoint_named_then_run_starts_over(tiny_wh, copy_warehouse, monkeypatch, caplog):
    clean, wh = copy_warehouse(tiny_wh), copy_warehouse(tiny_wh)
    expected = registry.run_with("pretrain", PRETRAIN, warehouse=clean, ds=D2)
    assert expected["steps"] > 1
    cfg = registry.build_config("pretrain", options={**PRETRAIN, "checkpoint_every": 1})
    real = train_loop.train
    monkeypatch.setattr(train_loop, "train", lambda *a, **kw: real(*a, stop_after_step=1, **kw))
    with pytest.raises(RuntimeError, match="stopped after step 1"):
        pretrain.run(cfg, ds=D2, warehouse=wh)
    monkeypatch.setattr(train_loop, "train", real)
    ckpt = model_store.run_dir(wh, f"lum-{D2}") / "checkpoint.pt"
    assert verify(wh, ds=D2)["counts"]["error"] == 0  # an interrupted run with a good checkpoint is fine
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])

    (err_row,) = rows(verify(wh), "error")
    assert (err_row["table"], err_row["ds"], err_row["check"]) == ("models/lum", D2, "checkpoint")
    assert err_row["detail"].startswith(f"training run lum-{D2}: checkpoint.pt is unreadable (")
    with caplog.at_level(logging.WARNING, logger="stages.training.loop"):
        resumed = pretrain.run(cfg, ds=D2, warehouse=wh)
    assert any("checkpoint.pt is unreadable" in r.message and "starting this run over from step 0" in r.message
               for r in caplog.records)
    assert resumed["resumed_from"] == 0 and resumed["steps"] == expected["steps"]
    assert resumed["loss_curve"] == expected["loss_curve"]  # the same run as one never interrupted
    assert verify(wh)["ok"]


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_model_file_named_and_refused_by_infer_and_warm_start(tiny_wh, copy_warehouse, damage, capsys):
    wh = copy_warehouse(tiny_wh)
    weights = model_store.store_root(wh) / f"lum-{D1}" / "model.pt"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a torch file")
    (err_row,) = rows(verify(wh), "error")
    assert (err_row["table"], err_row["ds"], err_row["check"]) == ("models/lum", D1, "model")
    assert err_row["detail"].startswith(f"model version lum-{D1}: model.pt is unreadable (")
    message = rf"^model version lum-{D1}: model.pt is unreadable \("
    with pytest.raises(ValueError, match=message):
        registry.run_with("infer", INFER, warehouse=wh, ds=D1)
    with pytest.raises(ValueError, match=message):
        registry.run_with("pretrain", PRETRAIN, warehouse=wh, ds=D2)  # warm start from lum-D1
    assert main(["run", "infer", "--ds", D1, "--warehouse", wh, "-q", "--set", "device=cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lum: error: model version lum-{D1}: model.pt is unreadable") and err.count("\n") == 1


def test_corrupt_version_checkpoint_refused_by_warm_start(tiny_wh, copy_warehouse):
    wh = copy_warehouse(tiny_wh)
    (model_store.store_root(wh) / f"lum-{D1}" / "checkpoint.pt").write_bytes(b"\x00" * 10)
    (err_row,) = rows(verify(wh), "error")
    assert (err_row["ds"], err_row["check"]) == (D1, "checkpoint")
    with pytest.raises(ValueError, match=rf"^model version lum-{D1}: checkpoint.pt is unreadable"):
        registry.run_with("pretrain", PRETRAIN, warehouse=wh, ds=D2)


def test_bad_rows_and_damaged_files_named(tiny_wh, copy_warehouse):
    wh = copy_warehouse(tiny_wh)
    uri = f"{wh}/user_knowledge"
    first = DeltaTable(uri).to_pyarrow_dataset().head(1)
    emb = first.column("embedding").to_pylist()[0]
    dup = first.set_column(first.schema.get_field_index("embedding"), "embedding",
                           pa.array([[float("nan")] + emb[1:]], first.schema.field("embedding").type))
    write_deltalake(uri, dup, mode="append", partition_by=["ds"])  # past the validated write paths
    seq = next(Path(wh, "user_sequences", f"ds={D2}").glob("*.parquet"))
    pq.write_table(pq.read_table(seq).slice(0, 1), seq)  # a file rewritten behind the log's back
    items = next(Path(wh, "items").glob("*.parquet"))
    items.write_bytes(items.read_bytes()[:40])

    report = verify(wh)
    got = {(f["table"], f["ds"], f["check"]): f["detail"] for f in rows(report, "error")}
    user = first.column("user_id")[0].as_py()
    assert got[("user_knowledge", D1, "keys")].startswith(f"key (user_id, condition) appears 2 times: user_id={user}")
    assert got[("user_knowledge", D1, "finite")].startswith(f"1 non-finite value(s); first: embedding of "
                                                            f"user_id={user}")
    assert got[("user_sequences", D2, "files")].endswith("1 rows in the file, 24 in the Delta log")
    assert "parquet footer unreadable" in got[("items", "", "files")]
    assert not report["ok"] and report["counts"]["error"] == 4
    seq_uri = f"{wh}/user_sequences"
    row = DeltaTable(seq_uri).to_pyarrow_dataset().to_table(filter=pc.field("ds") == D1).slice(0, 1)
    row = row.set_column(row.schema.get_field_index("user_id"), "user_id", pa.array([999], pa.int64()))
    row = row.set_column(row.schema.get_field_index("history_len"), "history_len", pa.array([99], pa.int32()))
    write_deltalake(seq_uri, row, mode="append", partition_by=["ds"])  # history_len disagrees with item_ids
    assert ("user_sequences", D1, "validate") not in {(f["table"], f["ds"], f["check"]) for f in verify(wh)["findings"]}
    deep = {(f["table"], f["ds"], f["check"]): f["detail"] for f in rows(verify(wh, deep=True), "error")}
    assert deep[("user_sequences", D1, "validate")].startswith("user_sequences: column history_len length differs")
    with pytest.raises(ValueError, match=r"^table items: read failed \(.*\); `lum verify` checks its files$"):
        Warehouse(wh).read("items")  # pretrain, sequences and join read items this way


def test_schema_comparison_names_the_column():
    expected = pa.schema([("user_id", pa.int64()), ("embedding", pa.list_(pa.float32(), 4)), ("c", pa.string())])
    same = pa.schema([("user_id", pa.int64()), ("embedding", pa.large_list(pa.float32())), ("c", pa.large_string())])
    assert _schema_problems(same, expected) == []
    other = pa.schema([("user_id", pa.int32()), ("embedding", pa.list_(pa.float64())), ("x", pa.string())])
    assert _schema_problems(other, expected) == [
        "missing column c", "unknown column x", "column user_id is int32, schema says int64",
        "column embedding is list<item: double>, schema says fixed_size_list<item: float>[4]"]
    older = pa.schema([("user_id", pa.int64()), ("embedding", pa.list_(pa.float32(), 4))])  # before column c existed
    assert _schema_problems(older, expected, optional=("c",)) == []
    assert _schema_problems(older, expected, optional=("embedding",)) == ["missing column c"]


def test_verify_of_an_empty_warehouse_and_bad_ds(warehouse, capsys):
    report = verify(warehouse)
    assert report["ok"] and report["tables"] == 0
    code, _, err = cli(capsys, "--warehouse", warehouse, "--ds", "2000-13-01")
    assert code == 2 and err.startswith("lum: error:")
