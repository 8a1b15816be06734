"""The infer stage end to end on a tiny real LUM and a real Delta warehouse (stages.infer.stage)."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from stages.core.conditions import parse_spec
from stages.infer import encode as infer_encode
from stages.infer import stage as infer
from stages.infer.stage import Config, check_query_features, run, with_feedback
from stages.model import store as model_store
from stages.model.lum import ModelConfig, build_model
from stages.model.vocab import Vocab
from stages.warehouse.facade import Warehouse

DS = "2000-01-10"
CATS = ["Action", "Comedy", "Drama", "Horror"]
ITEM_IDS = list(range(100, 140))


def item_category(item_id: int) -> str:
    return CATS[item_id % 4]


def make_vocab(features=("category",)) -> Vocab:
    return Vocab.build(ITEM_IDS, [item_category(i) for i in ITEM_IDS], features=features,
                       scenarios=["rating", "click"])


def publish_model(warehouse: str, through: str = DS, *, features=("category",), seed: int = 0,
                  dim_override: int | None = None, max_len: int = 16, cond_loss_weight: float = 1.0) -> str:
    """A randomly initialised tiny LUM published through the real model store."""
    vocab = make_vocab(features)
    torch.manual_seed(seed)
    mcfg = ModelConfig(d_model=16, n_heads=2, n_layers=2, d_ff=32, max_len=max_len, d_item=8, d_feature=4,
                       dropout=0.0, cond_loss_weight=cond_loss_weight, time_features=False)
    model = build_model(mcfg, vocab)
    import dataclasses

    version = model_store.version_name(through)
    meta = {"version": version, "through_ds": through, "config": {}, "metrics": {},
            "model_config": dataclasses.asdict(mcfg), "dim": dim_override or mcfg.knowledge_dim,
            "features": list(features)}
    model_store.publish(warehouse, version, {"model.pt": model.state_dict(), "vocab.json": vocab.to_json(),
                                             "meta.json": json.dumps(meta)})
    return version


def write_sequences(warehouse: str, n_users: int = 30, *, ds: str = DS, seed: int = 0, empty_users=(7,),
                    scenario: bool = False, unknown_items: bool = True, liked: bool = False) -> pa.Table:
    """user_sequences partition ds: users 1..n_users (written in shuffled order), 1..20 behaviours each."""
    rng = np.random.default_rng(seed)
    rows = []
    t0 = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    for uid in rng.permutation(np.arange(1, n_users + 1)).tolist():
        length = 0 if uid in empty_users else int(rng.integers(1, 21))
        items = rng.choice(ITEM_IDS, size=length).tolist()
        if unknown_items and uid == 3 and items:
            items[0] = 999  # never seen by the model: its OOV row
        conds = [f"category={item_category(i)}" + (",scenario=rating" if scenario else "") for i in items]
        if liked:  # feedback varies along the history, some behaviours unrated
            conds = [f"{c},liked={('yes', 'no', '<unk>')[(i + k) % 3]}" for k, (c, i) in enumerate(zip(conds, items))]
        rows.append({"user_id": uid, "item_ids": items, "conditions": conds,
                     "ts": [t0 + dt.timedelta(minutes=k) for k in range(length)],
                     "ratings": [4.0] * length, "history_len": length, "total_events": length})
    table = pa.Table.from_pylist(rows)
    Warehouse(warehouse).write_partition("user_sequences", table, ds=ds)
    return table


def write_items(warehouse: str) -> None:
    ids = ITEM_IDS + [999]
    Warehouse(warehouse).write_table("items", pa.table({
        "item_id": pa.array(ids, pa.int64()), "title": [f"t{i}" for i in ids],
        "category": [item_category(i) for i in ids], "categories": [[item_category(i)] for i in ids]}))


@pytest.fixture
def wh_ready(warehouse):
    publish_model(warehouse)
    write_sequences(warehouse)
    write_items(warehouse)
    return warehouse


def read_sorted(warehouse: str, name: str = "user_knowledge", ds: str = DS) -> pa.Table:
    keys = [("user_id", "ascending"), ("condition", "ascending")] if name == "user_knowledge" else \
        [("item_id", "ascending")]
    return Warehouse(warehouse).read(name, ds=ds).sort_by(keys)


def partition_files(warehouse: str, name: str = "user_knowledge", ds: str = DS) -> list[str]:
    return Warehouse(warehouse).delta_table(name).file_uris([("ds", "=", ds)])


def expected_embedding(warehouse: str, user_items: list[int], user_conds: list[str], condition: str) -> np.ndarray:
    """o_q computed directly through the model's plain causal training path (encode_packed) on
    history + (c_q, any item): o_q is the output at c_q. The history is at most history_len = max_len - 1
    behaviours, so history + query is a max_len training sequence."""
    loaded = model_store.load(warehouse, model_store.latest_version(warehouse, through=DS))
    vocab, model = loaded.vocab, loaded.model.eval()
    assert len(user_items) <= model.cfg.history_len
    items = np.append(vocab.item_rows(np.asarray(user_items)), 0)
    conds = np.append(vocab.condition_ids(user_conds), vocab.condition_id(condition))
    with torch.inference_mode():
        out = model.encode_packed(torch.from_numpy(items), torch.from_numpy(conds),
                                  torch.tensor([0, len(items)], dtype=torch.int32))
    return out[-1].numpy()


def test_run_writes_user_and_item_knowledge(wh_ready):
    summary = run(Config(chunk_users=8, row_group_rows=16), ds=DS, warehouse=wh_ready)
    seqs = Warehouse(wh_ready).read("user_sequences", ds=DS)
    n_with_history = sum(1 for h in seqs.column("history_len").to_pylist() if h > 0)
    assert summary["users"] == n_with_history == 29 and summary["users_skipped_empty"] == 1
    assert summary["rows"] == 29 * 4 and summary["n_conditions"] == 4
    assert summary["history_oov_items"] == 1 and summary["items_not_in_model"] == 1
    uk = read_sorted(wh_ready)
    assert uk.num_rows == 29 * 4
    assert set(uk.column("condition").to_pylist()) == {f"category={c}" for c in CATS}
    assert set(uk.column("model_version").to_pylist()) == {"lum-2000-01-10"}
    assert uk.schema.field("embedding").type == pa.list_(pa.field("element", pa.float32()), 16)
    assert 7 not in uk.column("user_id").to_pylist()
    # one user checked against a direct forward of the model (plain causal path)
    row = seqs.filter(pa.compute.equal(seqs.column("user_id"), 5)).to_pylist()[0]
    got = uk.filter(pa.compute.and_(pa.compute.equal(uk.column("user_id"), 5),
                                    pa.compute.equal(uk.column("condition"), "category=Drama")))
    assert row["history_len"] > 16  # longer than the model's max_len 16: the last history_len = 15 are used
    assert got.column("history_len").to_pylist() == [15]
    np.testing.assert_allclose(np.asarray(got.column("embedding").to_pylist()[0]),
                               expected_embedding(wh_ready, row["item_ids"][-15:], row["conditions"][-15:],
                                                  "category=Drama"), atol=1e-5)
    # item_knowledge: every item of the model vocabulary (999 is not in it), unit-norm e_i
    ik = read_sorted(wh_ready, "item_knowledge")
    assert ik.column("item_id").to_pylist() == ITEM_IDS
    norms = np.linalg.norm(np.asarray(ik.column("embedding").to_pylist()), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    # sorted by user_id inside every file, small row groups with statistics; 30 users (written in shuffled
    # order) processed in chunks of 8 share one file up to file_mb, or take one file each with file_mb=0
    _check_sorted_files(partition_files(wh_ready), 1)
    run(Config(chunk_users=8, row_group_rows=16, file_mb=0), ds=DS, warehouse=wh_ready)
    _check_sorted_files(partition_files(wh_ready), 4)
    assert read_sorted(wh_ready).equals(uk)
    with pytest.raises(ValueError, match="file_mb must be >= 0"):
        run(Config(file_mb=-1), ds=DS, warehouse=wh_ready)


def _check_sorted_files(files: list[str], count: int) -> None:
    assert len(files) == count
    ranges = []
    for path in files:
        pf = pq.ParquetFile(path)
        ids = pf.read(columns=["user_id"]).column("user_id").to_pylist()
        assert ids == sorted(ids)
        ranges.append((ids[0], ids[-1]))
        assert pf.metadata.num_row_groups >= 2 and pf.metadata.row_group(0).num_rows <= 16
        assert pf.metadata.row_group(0).column(0).statistics.has_min_max
    ranges.sort()
    assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:]))  # files cover disjoint user_id ranges


def test_grouped_and_naive_modes_give_the_same_table(wh_ready, tmp_path):
    run(Config(mode="grouped", token_budget=64), ds=DS, warehouse=wh_ready)
    grouped = read_sorted(wh_ready)
    summary = run(Config(mode="naive", token_budget=64), ds=DS, warehouse=wh_ready)
    naive = read_sorted(wh_ready)
    assert summary["mode"] == "naive"
    assert grouped.select(["user_id", "condition", "history_len"]) == naive.select(["user_id", "condition", "history_len"])
    np.testing.assert_allclose(np.asarray(grouped.column("embedding").to_pylist()),
                               np.asarray(naive.column("embedding").to_pylist()), atol=1e-5)


def test_rerun_replaces_the_partition_with_identical_content(wh_ready):
    run(Config(chunk_users=8), ds=DS, warehouse=wh_ready)
    first, v1 = read_sorted(wh_ready), Warehouse(wh_ready).version("user_knowledge")
    run(Config(chunk_users=8), ds=DS, warehouse=wh_ready)
    second, v2 = read_sorted(wh_ready), Warehouse(wh_ready).version("user_knowledge")
    assert v2 > v1 and second.num_rows == first.num_rows == 29 * 4
    assert second.drop_columns(["ds"]).equals(first.drop_columns(["ds"]))
    assert read_sorted(wh_ready, "item_knowledge").num_rows == len(ITEM_IDS)


def test_run_killed_midway_leaves_the_previous_partition(wh_ready, monkeypatch):
    run(Config(chunk_users=8), ds=DS, warehouse=wh_ready)
    before, version = read_sorted(wh_ready), Warehouse(wh_ready).version("user_knowledge")
    write_sequences(wh_ready, seed=1)  # new input: a successful run would change the partition
    real = infer.process_chunk
    calls = {"n": 0}

    def dies_after_first_chunk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(infer, "process_chunk", dies_after_first_chunk)
    with pytest.raises(RuntimeError, match="killed"):
        run(Config(chunk_users=8), ds=DS, warehouse=wh_ready)
    assert calls["n"] == 2  # the first chunk was staged before the kill
    assert Warehouse(wh_ready).version("user_knowledge") == version
    assert read_sorted(wh_ready).equals(before)
    monkeypatch.setattr(infer, "process_chunk", real)
    run(Config(chunk_users=8), ds=DS, warehouse=wh_ready)
    assert not read_sorted(wh_ready).equals(before)  # the new input does change it


def test_nan_embeddings_are_refused_before_the_commit(wh_ready, monkeypatch):
    real_encode = infer_encode.encode_batch

    def poisoned(model, batch, mode, **kwargs):
        out, log_p, pop_w = real_encode(model, batch, mode, **kwargs)
        out = out.clone()
        out[0, 0] = float("nan")
        return out, log_p, pop_w

    monkeypatch.setattr(infer_encode, "encode_batch", poisoned)
    with pytest.raises(ValueError, match="NaN/Inf"):
        run(Config(), ds=DS, warehouse=wh_ready)
    assert not Warehouse(wh_ready).exists("user_knowledge")


def test_wrong_dimension_is_refused(warehouse):
    publish_model(warehouse, dim_override=32)
    write_sequences(warehouse)
    with pytest.raises(ValueError, match=r"shape \(\d+, 16\), expected \(n, 32\)"):
        run(Config(), ds=DS, warehouse=warehouse)
    assert not Warehouse(warehouse).exists("user_knowledge")


def test_model_from_a_different_config_is_a_clear_error(warehouse):
    publish_model(warehouse, features=("category", "scenario"))
    write_sequences(warehouse)  # conditions carry only "category"
    with pytest.raises(ValueError, match="different config") as err:
        run(Config(conditions="all", with_features="scenario=rating"), ds=DS, warehouse=warehouse)
    assert "\n" not in str(err.value)


def test_missing_model_future_model_and_missing_partition(warehouse):
    write_sequences(warehouse)
    with pytest.raises(ValueError, match="no LUM model trained through"):
        run(Config(), ds=DS, warehouse=warehouse)
    publish_model(warehouse, through="2000-01-11")
    with pytest.raises(ValueError, match="after ds"):
        run(Config(model_version="lum-2000-01-11"), ds=DS, warehouse=warehouse)
    publish_model(warehouse, through="2000-01-09")
    with pytest.raises(ValueError, match="no partition ds=2000-01-12"):
        run(Config(), ds="2000-01-12", warehouse=warehouse)
    with pytest.raises(ValueError, match="mode must be"):
        run(Config(mode="fast"), ds=DS, warehouse=warehouse)


def test_top_k_and_multi_condition_queries(warehouse):
    publish_model(warehouse, features=("category", "scenario"))
    seqs = write_sequences(warehouse, scenario=True)
    summary = run(Config(conditions="top:2", with_features="scenario=rating"), ds=DS, warehouse=warehouse)
    uk = read_sorted(warehouse)
    assert summary["n_conditions"] is None
    expected = 0
    for row in seqs.to_pylist():
        cats = {c.split(",")[0] for c in row["conditions"]}
        expected += min(2, len(cats))
    assert uk.num_rows == summary["rows"] == expected
    assert all(c.endswith(",scenario=rating") and c.startswith("category=") for c in uk.column("condition").to_pylist())
    run(Config(conditions="list:category=Comedy,scenario=rating;category=Drama,scenario=click"), ds=DS,
        warehouse=warehouse)
    assert set(read_sorted(warehouse).column("condition").to_pylist()) == {
        "category=Comedy,scenario=rating", "category=Drama,scenario=click"}


def test_cli_runs_infer(wh_ready, capsys):
    from stages.cli.app import main

    assert main(["run", "infer", "--ds", DS, "--mode", "grouped", "--warehouse", wh_ready,
                 "--set", "chunk_users=16"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rows"] == 29 * 4 and summary["versions"]["user_knowledge"] >= 0


def test_liked_model_answers_every_category_under_both_feedback_values(warehouse):
    publish_model(warehouse, features=("category", "liked"))
    seqs = write_sequences(warehouse, liked=True)
    run(Config(conditions="all", with_features="liked=yes"), ds=DS, warehouse=warehouse)  # names liked: as asked
    assert set(read_sorted(warehouse).column("condition").to_pylist()) == {f"category={c},liked=yes" for c in CATS}
    summary = run(Config(), ds=DS, warehouse=warehouse)  # names no liked: both values, as with_features=liked=*
    uk = read_sorted(warehouse)
    assert summary["n_conditions"] == 8 and summary["rows"] == uk.num_rows == 29 * 8
    assert set(uk.column("condition").to_pylist()) == {f"category={c},liked={v}" for c in CATS for v in ("yes", "no")}
    row = seqs.filter(pa.compute.equal(seqs.column("user_id"), 5)).to_pylist()[0]
    got = {}
    for liked in ("yes", "no"):
        cond = f"category=Comedy,liked={liked}"
        sel = uk.filter(pa.compute.and_(pa.compute.equal(uk.column("user_id"), 5),
                                        pa.compute.equal(uk.column("condition"), cond)))
        got[liked] = np.asarray(sel.column("embedding").to_pylist()[0])
        np.testing.assert_allclose(got[liked], expected_embedding(warehouse, row["item_ids"][-15:],
                                                                  row["conditions"][-15:], cond), atol=1e-5)
    assert not np.allclose(got["yes"], got["no"])  # two questions, two answers
    lp = uk.filter(pa.compute.equal(uk.column("user_id"), 5)).column("condition_logprob").to_numpy()
    assert np.exp(lp).sum() == pytest.approx(1.0, abs=1e-5)
    summary = run(Config(conditions="top:2", with_features="liked=*"), ds=DS, warehouse=warehouse)
    conds = read_sorted(warehouse).column("condition").to_pylist()
    assert summary["rows"] == len(conds) and {c.split(",")[1] for c in conds} == {"liked=yes", "liked=no"}


def test_a_query_names_every_model_feature_and_liked_defaults_to_both_values():
    features = ("category", "liked")
    assert with_feedback(parse_spec("all"), features).with_features == (("liked", ("*",)),)
    assert with_feedback(parse_spec("all", with_features="liked=no"), features).with_features == (("liked", ("no",)),)
    assert with_feedback(parse_spec("all"), ("category",)).with_features == ()
    with pytest.raises(ValueError, match=r"has condition features category,scenario: the query conditions lack "
                                         r"scenario; add it with with_features$"):
        check_query_features(with_feedback(parse_spec("all"), ("category", "scenario")), ("category", "scenario"), "v1")


def test_the_heap_is_trimmed_once_per_chunk(wh_ready, monkeypatch):
    calls = []
    monkeypatch.setattr(infer.heap, "release", lambda: calls.append(1) or True)
    summary = run(Config(chunk_users=10), ds=DS, warehouse=wh_ready)
    assert summary["users_read"] == 30 and len(calls) == 3  # chunks of 10 users


def test_threads_option_is_applied_and_restored(wh_ready, monkeypatch):
    seen = []
    real = infer_encode.encode_batch

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(infer_encode, "encode_batch", spy)
    before = torch.get_num_threads()
    run(Config(threads=1), ds=DS, warehouse=wh_ready)
    assert seen and set(seen) == {1} and torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be >= 0"):
        run(Config(threads=-1), ds=DS, warehouse=wh_ready)
