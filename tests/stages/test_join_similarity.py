"""The Arrow-batch cosine kernel of the join against a per-row numpy reference (nulls included)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from stages.join_similarity import similarities


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
    norms = np.linalg.norm(users, axis=2)
    unit = items / np.linalg.norm(items, axis=1, keepdims=True)
    target = np.array([0, 1, 1, 2, 0, 2, 1])
    target_ok = has_cond[np.arange(n), target] & user_ok

    out = similarities(
        pa.array([u.ravel().tolist() if ok else None for u, ok in zip(users, user_ok)], pa.list_(pa.float32())),
        pa.array([[float(x) if h else None for x, h in zip(nr, hc)] if ok else None
                  for nr, hc, ok in zip(norms, has_cond, user_ok)], pa.list_(pa.float64())),
        pa.array([v.tolist() if ok else None for v, ok in zip(unit, item_ok)], pa.list_(pa.float32())),
        pa.array([users[i, target[i]].tolist() if target_ok[i] else None for i in range(n)],
                 pa.list_(pa.float32())),
        pa.array([float(norms[i, target[i]]) if target_ok[i] else None for i in range(n)], pa.float64()),
        n_cond=k, dim=d).to_pylist()

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
