"""The join's numpy LUM columns (stages.join.similarity.lum_columns) against per-row numpy references."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from stages.join.similarity import lum_columns

ENTRY_TYPE = pa.list_(pa.struct([("i", pa.int32()), ("e", pa.list_(pa.float32()))]))


def test_similarities_match_reference_with_nulls_and_zero_vectors():
    rng = np.random.default_rng(0)
    n, k, d = 7, 3, 5
    users = rng.normal(size=(n, k, d)).astype(np.float32)
    has_cond = rng.random((n, k)) > 0.25
    users[~has_cond] = 0.0
    users[2, 1] = 0.0  # a zero vector under a present condition -> sim 0.0
    has_cond[2, 1] = True
    items = rng.normal(size=(n, d)).astype(np.float32)
    user_ok = np.array([True, True, True, False, True, True, True])
    item_ok = np.array([True, True, True, True, False, True, True])
    target = np.array([0, 1, 1, 2, 0, 2, 1])
    target_ok = has_cond[np.arange(n), target] & user_ok

    cols = lum_columns(
        pa.array([[{"i": c, "e": users[r, c].tolist()} for c in range(k) if has_cond[r, c]] if user_ok[r] else None
                  for r in range(n)], ENTRY_TYPE),
        pa.array(target.tolist(), pa.int32()),
        pa.array([v.tolist() if ok else None for v, ok in zip(items, item_ok)], pa.list_(pa.float32())),
        n_cond=k, n_ext=k, dim=d, knowledge_ds="2000-01-01", model_version="m1",
        wanted=frozenset({"lum_match", "lum_target_match"}))
    out = pa.table({"lum_match": cols["lum_match"], "lum_target_match": cols["lum_target_match"]}).to_pylist()

    def ref(u, i):
        nu, ni = np.linalg.norm(u), np.linalg.norm(i)
        return 0.0 if nu == 0 or ni == 0 else float(u @ i / (nu * ni))

    for r in range(n):
        row = out[r]
        if not (user_ok[r] and item_ok[r]):
            assert row["lum_match"] is None and row["lum_target_match"] is None
            continue
        for c in range(k):
            expected = ref(users[r, c], items[r]) if has_cond[r, c] else None
            got = row["lum_match"][c]
            assert (got is None) if expected is None else got == pytest.approx(expected, abs=1e-5)
        if target_ok[r]:
            assert row["lum_target_match"] == pytest.approx(ref(users[r, target[r]], items[r]), abs=1e-5)
        else:
            assert row["lum_target_match"] is None
    assert out[2]["lum_match"][1] == 0.0


def test_lum_columns_match_reference_with_missing_conditions_and_nulls():
    rng = np.random.default_rng(3)
    n_cond, n_ext, dim = 3, 4, 5  # index 3: a target condition outside the configured list
    entries = [  # per row: {index: vector} or None (user without knowledge)
        {0: rng.standard_normal(dim), 2: rng.standard_normal(dim), 3: rng.standard_normal(dim)},
        {1: np.zeros(dim)},  # zero vector: sim 0.0
        None,
        {0: rng.standard_normal(dim), 1: rng.standard_normal(dim)},
        {2: rng.standard_normal(dim)},
    ]
    targets = [3, 1, 0, None, 2]
    items = [rng.standard_normal(dim), rng.standard_normal(dim), rng.standard_normal(dim),
             rng.standard_normal(dim), None]  # last: item without knowledge
    user_list = pa.array([None if e is None else [{"i": k, "e": v.astype(np.float32).tolist()} for k, v in e.items()]
                          for e in entries], ENTRY_TYPE)
    item_vec = pa.array([None if v is None else v.astype(np.float32).tolist() for v in items],
                        pa.list_(pa.float32()))
    wanted = frozenset({"lum_match", "lum_target_match", "lum_user"})  # lum_item not wanted: all null
    out = lum_columns(user_list, pa.array(targets, pa.int32()), item_vec, n_cond=n_cond, n_ext=n_ext, dim=dim,
                      knowledge_ds="2000-01-01", model_version="m1", wanted=wanted)

    def sim(u, e):
        nu, ne = np.linalg.norm(u), np.linalg.norm(e)
        return 0.0 if nu == 0 or ne == 0 else float(np.dot(u, e) / (nu * ne))

    for r, (ent, t, item) in enumerate(zip(entries, targets, items)):
        ok = ent is not None and item is not None
        assert out["lum_knowledge_ds"][r].as_py() == ("2000-01-01" if ok else None)
        assert out["lum_model_version"][r].as_py() == ("m1" if ok else None)
        assert out["lum_item"][r].as_py() is None
        match = out["lum_match"][r].as_py()
        if not ok:
            assert match is None and out["lum_target_match"][r].as_py() is None
            assert out["lum_user"][r].as_py() is None
            continue
        want = [None if k not in ent else sim(ent[k], item) for k in range(n_cond)]
        assert [m is None for m in match] == [w is None for w in want]
        np.testing.assert_allclose([m for m in match if m is not None], [w for w in want if w is not None],
                                   rtol=1e-5, atol=1e-6)
        if t is None or t not in ent:
            assert out["lum_target_match"][r].as_py() is None and out["lum_user"][r].as_py() is None
        else:
            assert out["lum_target_match"][r].as_py() == pytest.approx(sim(ent[t], item), rel=1e-5, abs=1e-6)
            np.testing.assert_allclose(out["lum_user"][r].as_py(), ent[t].astype(np.float32))


def test_disliked_entries_give_the_target_similarity_only():
    rng = np.random.default_rng(5)
    n_cond, n_ext, dim = 2, 3, 4  # entries n_ext + k: condition k under liked=no
    yes = {0: rng.standard_normal(dim), 2: rng.standard_normal(dim)}
    no = {0: rng.standard_normal(dim), 1: rng.standard_normal(dim), 2: np.zeros(dim)}
    rows = [  # (entries {index: vector}, target)
        ({**yes, **{n_ext + k: v for k, v in no.items()}}, 0),   # both
        ({n_ext + 1: no[1]}, 1),                                  # liked=no only
        ({**yes, n_ext + 0: no[0]}, 2),                           # no liked=no under the target
        ({n_ext + 2: no[2]}, 2),                                  # zero vector: 0.0
        ({n_ext + 0: no[0]}, None),                               # no target condition
    ]
    item = rng.standard_normal(dim)
    user_list = pa.array([[{"i": k, "e": v.astype(np.float32).tolist()} for k, v in e.items()] for e, _ in rows],
                         ENTRY_TYPE)
    out = lum_columns(user_list, pa.array([t for _, t in rows], pa.int32()),
                      pa.array([item.astype(np.float32).tolist()] * len(rows), pa.list_(pa.float32())),
                      n_cond=n_cond, n_ext=n_ext, dim=dim, knowledge_ds="2000-01-01", model_version="m1",
                      wanted=frozenset({"lum_match", "lum_target_match", "lum_target_match_disliked"}))
    got = out["lum_target_match_disliked"].to_pylist()
    item32 = item.astype(np.float32)
    assert got[0] == pytest.approx(float(no[0] @ item32 / np.linalg.norm(no[0]) / np.linalg.norm(item32)), abs=1e-5)
    assert got[1] == pytest.approx(float(no[1] @ item32 / np.linalg.norm(no[1]) / np.linalg.norm(item32)), abs=1e-5)
    assert got[2:] == [None, 0.0, None]
    assert out["lum_target_match"].to_pylist()[1] is None  # the liked=no vector never fills the liked columns
    assert out["lum_match"].to_pylist()[1] == [None, None]
    assert out["lum_target_match"].to_pylist()[0] == pytest.approx(
        float(yes[0] @ item32 / np.linalg.norm(yes[0]) / np.linalg.norm(item32)), abs=1e-5)
    with pytest.raises(ValueError, match=r"index out of 0\.\.5"):
        lum_columns(pa.array([[{"i": 6, "e": [0.0] * dim}]], ENTRY_TYPE), pa.array([0], pa.int32()),
                    pa.array([[1.0] * dim], pa.list_(pa.float32())), n_cond=n_cond, n_ext=n_ext, dim=dim,
                    knowledge_ds="d", model_version="m", wanted=frozenset())
    unwanted = lum_columns(user_list, pa.array([0] * len(rows), pa.int32()),
                           pa.array([item.astype(np.float32).tolist()] * len(rows), pa.list_(pa.float32())),
                           n_cond=n_cond, n_ext=n_ext, dim=dim, knowledge_ds="d", model_version="m",
                           wanted=frozenset({"lum_target_match"}))
    assert unwanted["lum_target_match_disliked"].null_count == len(rows)
