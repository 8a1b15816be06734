"""Cosine similarities of the join, vectorised over an Arrow batch (the ``similarity="arrow"`` path).

Spark hands an Arrow UDF one batch of rows (default 10,000) with, per row:
- ``user_flat``: list<float> of N*D values, the user's o_q for the N configured conditions in order
  (zeros where the user has no vector for a condition; null when the user has no knowledge at all),
- ``user_norms``: list<double> of N values, |o_q| (null where the user has no vector for the condition),
- ``item_unit``: list<float> of D values, e_i / |e_i| (null when the item has no knowledge),
- ``target_vec`` (list<float> D) and ``target_norm`` (double): o_q under the target item's condition.
It returns struct<lum_match: list<float> N, lum_target_match: float>: dot(o_q, e_i/|e_i|) / |o_q| as
one ``einsum`` per batch ((B, N, D) x (B, D)), ~N*D multiply-adds per row in numpy instead of Spark's
interpreted lambda functions. Same conventions as the SQL path: 0.0 when |o_q| = 0, null element
where the condition has no vector, null row where the user or the item has no knowledge.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

RESULT_TYPE = "struct<lum_match: array<float>, lum_target_match: float>"


def _matrix(arr: pa.Array, width: int, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """list column -> ((n, width) array, nan for null elements, 0 for null rows; (n,) valid rows)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), bool)
    out = np.zeros((n, width), dtype)
    if valid.any() and width:
        values = pc.list_flatten(arr).to_numpy(zero_copy_only=False).astype(dtype, copy=False)
        if values.size != int(valid.sum()) * width:
            raise ValueError(f"list column has {values.size} values for {int(valid.sum())} rows of width {width}")
        out[valid] = values.reshape(-1, width)
    return out, valid


def similarities(user_flat: pa.Array, user_norms: pa.Array, item_unit: pa.Array, target_vec: pa.Array,
                 target_norm: pa.Array, *, n_cond: int, dim: int) -> pa.StructArray:
    """lum_match (list<float>[n_cond]) and lum_target_match (float) for one batch; see module doc."""
    n = len(user_flat)
    users, u_ok = _matrix(user_flat, n_cond * dim, np.float32)
    norms, _ = _matrix(user_norms, n_cond, np.float64)
    items, i_ok = _matrix(item_unit, dim, np.float32)
    row_ok = u_ok & i_ok
    dots = np.einsum("nkd,nd->nk", users.reshape(n, n_cond, dim), items, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        sims = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0)
    elem_null = np.isnan(norms) | ~row_ok[:, None]
    offsets = pa.array(np.arange(0, n * n_cond + 1, n_cond, dtype=np.int32))
    values = pa.array(sims.astype(np.float32).ravel(), mask=elem_null.ravel())
    match = pa.ListArray.from_arrays(offsets, values, mask=pa.array(~row_ok))

    tvec, t_ok = _matrix(target_vec, dim, np.float32)
    tnorm = np.asarray(pc.fill_null(target_norm, 0.0).to_numpy(zero_copy_only=False), np.float64)
    tdot = np.einsum("nd,nd->n", tvec, items, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        tsim = np.where(tnorm > 0, tdot / np.where(tnorm > 0, tnorm, 1.0), 0.0)
    target = pa.array(tsim.astype(np.float32), mask=~(t_ok & row_ok))
    return pa.StructArray.from_arrays([match, target], names=["lum_match", "lum_target_match"])


def batch_function(n_cond: int, dim: int):
    """The Arrow UDF body for ``n_cond`` conditions of width ``dim`` (type hints tell Spark it is scalar)."""

    def lum_similarities(user_flat: pa.Array, user_norms: pa.Array, item_unit: pa.Array, target_vec: pa.Array,
                         target_norm: pa.Array) -> pa.Array:
        return similarities(user_flat, user_norms, item_unit, target_vec, target_norm, n_cond=n_cond, dim=dim)

    return lum_similarities
