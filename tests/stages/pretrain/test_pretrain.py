"""pretrain stage: publish a version, daily continuation chain, reruns, bad inputs."""

from __future__ import annotations

import json

import pytest
import torch

from stages.core.config import from_mapping
from stages.model import store as model_store
from stages.model.timefeat import AGE_BUCKETS, POP_BUCKETS
from stages.pretrain import stage as pretrain
from tests.stages.pretrain_fixtures import TINY, make_warehouse


def _cfg(**kw):
    return from_mapping(pretrain.Config, {**TINY, **kw})


def _weights(wh, version):
    return model_store.load(wh, version).model.state_dict()


def test_scratch_then_warm_start_chain_and_rerun(warehouse):
    d1, d2, _ = make_warehouse(warehouse, days=3)
    s1 = pretrain.run(_cfg(), ds=d1, warehouse=warehouse)
    assert s1["version"] == "lum-" + d1 and s1["parent"] is None and s1["steps"] > 0
    # fewer steps than curve points: one point per step, the last one the final loss
    assert [p[0] for p in s1["loss_curve"]] == list(range(1, s1["steps"] + 1))
    assert s1["loss_curve"][-1][1] == s1["loss"]
    assert model_store.latest_version(warehouse, through=d1) == "lum-" + d1
    assert model_store.latest_version(warehouse, through="1999-12-31") is None
    s2 = pretrain.run(_cfg(), ds=d2, warehouse=warehouse)
    assert s2["parent"] == "lum-" + d1
    assert s2["users"] == 12            # only the users whose history changed on d2
    meta = json.loads((model_store.store_root(warehouse) / ("lum-" + d2) / "meta.json").read_text())
    assert meta["through_ds"] == d2 and meta["parent"] == "lum-" + d1
    w1, w2 = _weights(warehouse, "lum-" + d1), _weights(warehouse, "lum-" + d2)
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)
    # rerunning d2 replaces lum-d2 with the same content (seeded)
    pretrain.run(_cfg(), ds=d2, warehouse=warehouse)
    w2b = _weights(warehouse, "lum-" + d2)
    for k in w2:
        torch.testing.assert_close(w2[k], w2b[k], rtol=0, atol=0)
    assert not list(model_store.store_root(warehouse).glob(".tmp-*"))
    assert not (model_store.store_root(warehouse) / "_runs" / ("lum-" + d2)).exists()
    # --retrain ignores the parent
    s2r = pretrain.run(_cfg(retrain=True), ds=d2, warehouse=warehouse)
    assert s2r["parent"] is None and s2r["users"] == 24


def test_config_nests_model_and_train_options():
    """Flat names reach the nested configs; the flat form (stored config, run hash) is the pre-nesting one."""
    cfg = _cfg(epochs=3, **{"model.n_layers": 2})
    assert (cfg.model.d_model, cfg.model.n_layers, cfg.train.epochs) == (TINY["d_model"], 2, 3.0)
    assert cfg.train_config(warm=False).epochs == 3.0
    assert cfg.train_config(warm=True).epochs == TINY["continue_epochs"]
    default = from_mapping(pretrain.Config, {})
    assert default.train.epochs == pretrain.SCRATCH_EPOCHS and default.continue_epochs == 1.0
    # the hash of the flat Config (pinned: a change restarts interrupted runs; new options change it on purpose)
    assert pretrain.config_hash(default) == "3efacb18"
    with pytest.raises(ValueError, match="unknown Config option"):
        _cfg(d_modle=8)


def test_loaded_model_answers_grouped_queries(warehouse):
    d1, = make_warehouse(warehouse, days=1)
    pretrain.run(_cfg(), ds=d1, warehouse=warehouse)
    loaded = model_store.load(warehouse, "lum-" + d1)
    v = loaded.vocab
    hist = torch.from_numpy(v.item_rows([1, 5, 9]))
    conds = torch.from_numpy(v.condition_ids(["category=g1"] * 3))
    q = torch.tensor([v.condition_id("category=g1"), v.condition_id("category=g2")])
    o = loaded.model.encode_grouped(hist, conds, torch.tensor([0, 3], dtype=torch.int32), q,
                                    torch.tensor([0, 2], dtype=torch.int32))
    assert o.shape == (2, TINY["d_model"]) and loaded.meta["dim"] == TINY["d_model"] + POP_BUCKETS  # [o, T w]
    assert loaded.meta["config"]["max_len"] == TINY["max_len"]
    with pytest.raises(ValueError, match="not found"):
        model_store.load(warehouse, "lum-2099-01-01")


def test_bad_inputs_are_clear_errors(warehouse):
    d1, d2 = make_warehouse(warehouse, days=2)
    with pytest.raises(ValueError, match="no model version through"):
        pretrain.run(_cfg(require_warm_start=True), ds=d2, warehouse=warehouse)
    with pytest.raises(ValueError, match="no partition ds=2000-02-01"):
        pretrain.run(_cfg(), ds="2000-02-01", warehouse=warehouse)
    with pytest.raises(ValueError, match="must be a positive multiple of n_heads"):
        pretrain.run(_cfg(d_model=18, n_heads=4), ds=d1, warehouse=warehouse)
    with pytest.raises(ValueError, match="row_tokens 16 must be >= 2 \\* max_len"):
        pretrain.run(_cfg(row_tokens=16), ds=d1, warehouse=warehouse)
    assert model_store.list_versions(warehouse) == []


def test_no_changed_users_publishes_parent_weights(warehouse):
    d1, d2 = make_warehouse(warehouse, days=2, per_day=0)
    pretrain.run(_cfg(), ds=d1, warehouse=warehouse)
    # make d2 identical to d1 except the ds: nobody changed on d2
    from stages.warehouse.facade import Warehouse
    wh = Warehouse(warehouse)
    t = wh.read("user_sequences", ds=d1)
    wh.write_partition("user_sequences", t.set_column(t.schema.get_field_index("ds"), "ds",
                                                      __import__("pyarrow").array([d2] * t.num_rows)), ds=d2)
    s = pretrain.run(_cfg(), ds=d2, warehouse=warehouse)
    assert s["steps"] == 0 and s["users"] == 0
    w1, w2 = _weights(warehouse, "lum-" + d1), _weights(warehouse, "lum-" + d2)
    for k in w1:
        assert torch.equal(w1[k], w2[k])


def test_cli_eval_reports_metrics(warehouse, capsys):
    from stages.cli.app import main

    d1, = make_warehouse(warehouse, days=1)
    sets = [x for k, v in TINY.items() for x in ("--set", f"{k}={v}")]
    rc = main(["run", "pretrain", "--ds", d1, "--retrain", "--warehouse", warehouse, "--set", "eval=true", *sets])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["version"] == "lum-" + d1
    assert 0.0 <= summary["hr@10"] <= 1.0 and 0.0 <= summary["ndcg@10"] <= summary["hr@10"]
    meta = model_store.load(warehouse, "lum-" + d1).meta
    # users with >= 3 behaviours are evaluated (lengths 1..5 in the fixture: u%5 in {2,3,4})
    assert meta["metrics"]["test"]["users"] == sum(1 for u in range(24) if 1 + u % 5 >= 3)
    assert meta["metrics"]["test"]["hr@10"] == summary["hr@10"]
    assert meta["metrics"]["train_sequences"] == 24  # single-behaviour users are kept for training


def test_warm_start_with_new_items_extends_the_vocabulary(warehouse):
    import pyarrow as pa

    from stages.warehouse.facade import Warehouse

    d1, d2 = make_warehouse(warehouse, days=2)
    pretrain.run(_cfg(), ds=d1, warehouse=warehouse)
    wh = Warehouse(warehouse)
    items = wh.read("items")
    new = pa.table({"item_id": pa.array([99], pa.int64()), "title": ["new"], "category": ["g_new"],
                    "categories": [["g_new"]]})
    base = items.select(new.column_names)
    wh.write_table("items", pa.concat_tables([base, new.cast(base.schema)]))
    s = pretrain.run(_cfg(), ds=d2, warehouse=warehouse)
    assert s["parent"] == "lum-" + d1
    old, grown = model_store.load(warehouse, "lum-" + d1), model_store.load(warehouse, "lum-" + d2)
    assert grown.vocab.n_item_rows == old.vocab.n_item_rows + 1
    assert "category=g_new" in grown.vocab.conditions


def test_train_windows_cover_long_histories_on_scratch_runs_only(warehouse):
    """max_len 4: a retrain with train_windows=0 trains every 4-behaviour window of each history (dropping
    1-behaviour tails); a warm-started day trains only the changed users' newest window."""
    d1, d2, d3 = make_warehouse(warehouse, days=3)
    lengths = [1 + (u % 5) + (12 if u % 2 == 0 else 0) for u in range(24)]   # day-3 history lengths

    def n_windows(n, m=4):
        full, tail = divmod(n, m)
        return full + (1 if tail >= 2 or (tail and not full) else 0)

    assert pretrain.run(_cfg(max_len=4, train_windows=1, retrain=True), ds=d3, warehouse=warehouse)["sequences"] == 24
    s = pretrain.run(_cfg(max_len=4, train_windows=0, retrain=True, max_steps=2), ds=d3, warehouse=warehouse)
    assert s["sequences"] == sum(n_windows(n) for n in lengths) > 24
    pretrain.run(_cfg(max_len=4, train_windows=0, retrain=True, max_steps=2), ds=d2, warehouse=warehouse)
    warm = pretrain.run(_cfg(max_len=4, train_windows=0, max_steps=2), ds=d3, warehouse=warehouse)
    assert warm["parent"] == "lum-" + d2 and warm["sequences"] == 12
    with pytest.raises(ValueError, match="train_windows"):
        pretrain.run(_cfg(train_windows=-1), ds=d3, warehouse=warehouse)


def test_a_daily_run_keeps_its_parents_time_features(warehouse):
    """Upgrading the default does not change the width of a running pipeline's knowledge: a warm start keeps the
    parent's time_features; --retrain takes the new one."""
    d1, d2 = make_warehouse(warehouse, days=2)
    pretrain.run(_cfg(time_features=False), ds=d1, warehouse=warehouse)
    pretrain.run(_cfg(), ds=d2, warehouse=warehouse)
    child = model_store.load(warehouse, "lum-" + d2)
    assert child.meta["parent"] == "lum-" + d1
    assert child.model.cfg.time_features is False and child.meta["dim"] == TINY["d_model"]
    pretrain.run(_cfg(retrain=True), ds=d2, warehouse=warehouse)
    assert model_store.load(warehouse, "lum-" + d2).meta["dim"] == TINY["d_model"] + POP_BUCKETS
    # item_age widens the knowledge too: a parent with it passes it on, one without keeps it off
    pretrain.run(_cfg(retrain=True, item_age=True), ds=d1, warehouse=warehouse)
    pretrain.run(_cfg(), ds=d2, warehouse=warehouse)
    child = model_store.load(warehouse, "lum-" + d2)
    assert child.meta["parent"] == "lum-" + d1 and child.model.cfg.item_age is True
    assert child.meta["dim"] == TINY["d_model"] + POP_BUCKETS + AGE_BUCKETS
