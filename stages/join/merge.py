"""The user join done in Python, per Spark partition: each user's vectors cross into Python once, not per sample.

``mapInArrow`` gets one partition of sample rows (``_tag`` 1) and user rows (``_tag`` 0: ``_ulist``, the
user's list<struct<i, e>>) hash-partitioned by ``_key`` (user id) and sorted by (``_key``, ``_tag``), so a user's
row comes right before its samples, possibly in an earlier Arrow batch (the last user row is carried over).
Every user row has samples (the knowledge was semi-joined with the samples' users), so a user row not followed
by a sample of its key means the two sides were partitioned apart: a ``RuntimeError``, never rows silently
without knowledge.
``merge_partition`` turns each batch into the output rows of its samples: every sample gets the matrices of the
user row just before it when the keys match (else no user knowledge: null LUM columns), then
``stages.join.similarity.lum_columns_of``. Memory: one batch x 2 n_ext x D float32 plus the batch's users. User
vectors of a width other than D are not an error here: the rows are never committed, because the users' check
aggregates, observed by the same job, fail (``stages.join.inputs.Knowledge.check_users``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stages.join.similarity import lum_columns_of, user_matrices, vector_matrix

NO_KEY = np.iinfo(np.int64).min  # stands for a null key (never matches: ``valid`` is checked as well)


def _keys(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(int64 keys with nulls as NO_KEY, valid mask)."""
    valid = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), bool)
    keys = np.asarray(pc.fill_null(column, NO_KEY).to_numpy(zero_copy_only=False), np.int64)
    return keys, valid


def item_lookup(table: tuple[np.ndarray, np.ndarray], item_ids: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(B, D) e_i and (B,) found of ``item_ids`` in ``table`` = (sorted unique item ids, (n, D) float32 vectors)."""
    ids, vectors = table
    keys, valid = _keys(item_ids)
    pos = np.minimum(np.searchsorted(ids, keys), max(len(ids) - 1, 0))
    found = valid & (ids[pos] == keys) if len(ids) else np.zeros(len(keys), bool)
    out = np.zeros((len(keys), vectors.shape[1]), np.float32)
    out[found] = vectors[pos[found]]
    return out, found


def merge_partition(batches: Iterable[pa.RecordBatch], *, sample_cols: list[str], names: list[str], n_cond: int,
                    n_ext: int, dim: int, knowledge_ds: str, model_version: str, wanted: frozenset[str],
                    items: tuple[np.ndarray, np.ndarray] | None = None) -> Iterator[pa.RecordBatch]:
    """The output batches (columns ``names``: ``sample_cols`` then the LUM columns) of one sorted partition.
    ``items``: the item vectors as ``item_lookup``'s table (None: each sample row carries its ``_ie``)."""
    w = 2 * n_ext  # user_matrices' width: the conditions, then their liked=no vectors
    carry_key, carry = NO_KEY, (np.zeros((1, w, dim), np.float32), np.zeros((1, w)), np.zeros((1, w), bool))
    waiting: int | None = None  # the key of a batch's last row when it is a user row: its samples come next
    for batch in batches:
        if not batch.num_rows:
            continue
        tag = np.asarray(batch.column("_tag").to_numpy(zero_copy_only=False))
        keys, valid = _keys(batch.column("_key"))
        is_user = tag == 0
        u_pos = np.flatnonzero(is_user)
        s_pos = np.flatnonzero(~is_user)
        if waiting is not None and (is_user[0] or keys[0] != waiting):
            _apart(waiting)
        waiting = int(keys[-1]) if is_user[-1] else None
        inside = u_pos[u_pos + 1 < len(tag)]
        alone = is_user[inside + 1] | (keys[inside + 1] != keys[inside])
        if alone.any():
            _apart(int(keys[inside[alone][0]]))
        try:
            users, norms, present = user_matrices(batch.column("_ulist").take(pa.array(u_pos)), n_ext, dim)
        except ValueError:  # vectors of another width: the write's user check refuses the commit, naming it
            users, norms = np.zeros((u_pos.size, w, dim), np.float32), np.zeros((u_pos.size, w))
            present = np.zeros((u_pos.size, w), bool)
        # index 0: the user row carried from earlier batches; i >= 1: the batch's i-th user row
        users = np.concatenate([carry[0], users])
        norms = np.concatenate([carry[1], norms])
        present = np.concatenate([carry[2], present])
        user_keys = np.concatenate([[carry_key], keys[u_pos]])
        if u_pos.size:
            carry_key, carry = keys[u_pos[-1]], (users[-1:], norms[-1:], present[-1:])
        if not s_pos.size:
            continue
        owner = np.cumsum(is_user)[s_pos]  # the last user row at or before each sample
        matched = (user_keys[owner] == keys[s_pos]) & valid[s_pos] & (user_keys[owner] != NO_KEY)
        samples = batch.take(pa.array(s_pos))
        vecs, found = (item_lookup(items, samples.column("item_id")) if items is not None
                       else vector_matrix(samples.column("_ie"), dim))
        lum = lum_columns_of(users[owner], norms[owner], present[owner] & matched[:, None], matched,
                             samples.column("_tidx"), vecs, found, n_cond=n_cond, n_ext=n_ext,
                             knowledge_ds=knowledge_ds, model_version=model_version, wanted=wanted)
        cols = [samples.column(c) for c in sample_cols] + [lum[name] for name in names[len(sample_cols):]]
        yield pa.RecordBatch.from_arrays(cols, names=names)
    if waiting is not None:
        _apart(waiting)


def _apart(key: int) -> None:
    raise RuntimeError(f"join: the knowledge of user_id {key} reached a Spark task without that user's samples; "
                       "the samples and the knowledge were not partitioned alike (stages.join.frame)")
