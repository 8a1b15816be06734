"""The LUM columns of one Arrow batch of joined samples, numpy only (called per batch by ``mapInArrow``).

sim(o_q, e_i) = dot(o_q, e_i) / (|o_q| |e_i|), 0.0 when either vector is all zeros; computed as one
``einsum`` per batch ((B, n_ext, D) x (B, D)) with each norm computed once per (user, condition) and
per item. Nulls: a null ``lum_match`` element where the user has no vector for that condition, null
LUM columns where the user or the item has no knowledge, and every column the spec does not want.
User entries n_ext..2 n_ext-1 are ``liked=no`` vectors (stages.join.frame): only the target's enters a column
(``lum_target_match_disliked``). Memory: B x 2 n_ext x D float32 per batch.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def vector_matrix(arr: pa.Array, width: int, dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
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


def user_matrices(user_list: pa.Array, n_ext: int, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """list<struct<i: int 0-based, e: list<float> D>> per row -> (U (n, 2 n_ext, D) f32, |u| (n, 2 n_ext) f64,
    present): index k < n_ext is condition k, n_ext + k its ``liked=no`` vector.

    Entries with an index outside 0..2 n_ext-1 are an error (the join maps conditions to indexes).
    """
    if isinstance(user_list, pa.ChunkedArray):
        user_list = user_list.combine_chunks()
    n = len(user_list)
    users = np.zeros((n, 2 * n_ext, dim), np.float32)
    norms = np.zeros((n, 2 * n_ext), np.float64)
    present = np.zeros((n, 2 * n_ext), bool)
    flat = pc.list_flatten(user_list)
    if len(flat):
        rows = np.asarray(pc.list_parent_indices(user_list).to_numpy(zero_copy_only=False), np.int64)
        idx = np.asarray(pc.struct_field(flat, "i").to_numpy(zero_copy_only=False), np.int64)
        vecs = pc.list_flatten(pc.struct_field(flat, "e")).to_numpy(zero_copy_only=False).astype(np.float32)
        if vecs.size != len(flat) * dim:
            raise ValueError(f"user vectors: {vecs.size} values for {len(flat)} entries of width {dim}")
        if idx.size and (idx.min() < 0 or idx.max() >= 2 * n_ext):
            raise ValueError(f"user condition index out of 0..{2 * n_ext - 1}: {idx.min()}..{idx.max()}")
        vecs = vecs.reshape(-1, dim)
        users[rows, idx] = vecs
        norms[rows, idx] = np.sqrt(np.einsum("kd,kd->k", vecs, vecs, dtype=np.float64))
        present[rows, idx] = True
    return users, norms, present


def _list_column(matrix: np.ndarray, null_rows: np.ndarray, null_values: np.ndarray | None = None) -> pa.ListArray:
    """(n, w) float matrix -> list<float> of width w; rows / elements masked where the masks are True."""
    n, w = matrix.shape
    offsets = pa.array(np.arange(0, n * w + 1, w, dtype=np.int32))
    mask = None if null_values is None else null_values.ravel()
    values = pa.array(matrix.astype(np.float32, copy=False).ravel(), mask=mask)
    return pa.ListArray.from_arrays(offsets, values, mask=pa.array(null_rows))


def lum_columns(user_list: pa.Array, target_index: pa.Array, item_vec: pa.Array, *, n_cond: int, n_ext: int,
                dim: int, knowledge_ds: str, model_version: str, wanted: frozenset[str]) -> dict[str, pa.Array]:
    """The seven LUM columns of one batch of B joined samples, numpy only; a column not in ``wanted`` is all null.

    Per row: ``user_list`` list<struct<i, e>> (i indexes the n_ext conditions: the n_cond configured ones, then
    unconfigured target conditions, then the same n_ext under liked=no; null: no user knowledge),
    ``target_index`` (null: no target condition in the list), ``item_vec`` list<float> of D raw e_i (null: no
    item knowledge). sim = cosine, 0.0 when a norm is 0.
    """
    users, norms, present = user_matrices(user_list, n_ext, dim)
    u_ok = np.asarray(user_list.is_valid().to_numpy(zero_copy_only=False), bool)
    items, i_ok = vector_matrix(item_vec, dim)
    return lum_columns_of(users, norms, present, u_ok, target_index, items, i_ok, n_cond=n_cond, n_ext=n_ext,
                          knowledge_ds=knowledge_ds, model_version=model_version, wanted=wanted)


def lum_columns_of(users: np.ndarray, norms: np.ndarray, present: np.ndarray, u_ok: np.ndarray,
                   target_index: pa.Array, items: np.ndarray, i_ok: np.ndarray, *, n_cond: int, n_ext: int,
                   knowledge_ds: str, model_version: str, wanted: frozenset[str]) -> dict[str, pa.Array]:
    """``lum_columns`` from matrices, one row per sample: the users' (``user_matrices``' three arrays; ``u_ok``
    (B,) the user has knowledge) and the items' (``vector_matrix``: (B, D) float32 e_i, ``i_ok`` (B,))."""
    n = len(items)
    row_ok = u_ok & i_ok
    inorm = np.sqrt(np.einsum("nd,nd->n", items, items, dtype=np.float64))
    unit = items / np.where(inorm > 0, inorm, 1.0)[:, None]
    liked_no = (users[:, n_ext:], norms[:, n_ext:], present[:, n_ext:])
    users, norms, present = users[:, :n_ext], norms[:, :n_ext], present[:, :n_ext]
    dots = np.einsum("nkd,nd->nk", users, unit)
    with np.errstate(divide="ignore", invalid="ignore"):
        sims = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0)
    tidx = np.asarray(pc.fill_null(target_index, -1).to_numpy(zero_copy_only=False), np.int64)
    has_t = (tidx >= 0) & (tidx < n_ext)
    safe = np.where(has_t, tidx, 0)
    rows = np.arange(n)
    t_ok = has_t & row_ok & present[rows, safe]
    d_norm = liked_no[1][rows, safe]
    with np.errstate(divide="ignore", invalid="ignore"):
        d_sims = np.where(d_norm > 0, np.einsum("nd,nd->n", liked_no[0][rows, safe], unit) / np.where(
            d_norm > 0, d_norm, 1.0), 0.0)
    d_ok = has_t & row_ok & liked_no[2][rows, safe]
    none = np.ones(n, bool)
    out = {
        "lum_match": _list_column(sims[:, :n_cond], ~row_ok if "lum_match" in wanted else none,
                                  ~present[:, :n_cond]),
        "lum_target_match": pa.array(sims[rows, safe].astype(np.float32),
                                     mask=~t_ok if "lum_target_match" in wanted else none),
        "lum_user": _list_column(users[rows, safe], ~t_ok if "lum_user" in wanted else none),
        "lum_item": _list_column(items, ~row_ok if "lum_item" in wanted else none),
        "lum_knowledge_ds": pc.if_else(pa.array(row_ok), pa.scalar(knowledge_ds, pa.string()),
                                       pa.scalar(None, pa.string())),
        "lum_model_version": pc.if_else(pa.array(row_ok), pa.scalar(model_version, pa.string()),
                                        pa.scalar(None, pa.string())),
        "lum_target_match_disliked": pa.array(d_sims.astype(np.float32),
                                              mask=~d_ok if "lum_target_match_disliked" in wanted else none),
    }
    return out
