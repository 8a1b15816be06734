"""``Warehouse.write_table`` with an iterable of chunks: each chunk validated as the write streams it."""

from __future__ import annotations

import pyarrow as pa
import pytest

from stages.warehouse.facade import Warehouse


def _users(lo: int, hi: int) -> pa.Table:
    ids = list(range(lo, hi))
    return pa.table({"user_id": ids, "source_id": [f"u{i}" for i in ids], "age": [30] * len(ids),
                     "gender": ["F"] * len(ids), "occupation": ["writer"] * len(ids)})


def test_chunks_make_one_table_in_one_commit(tmp_path):
    wh = Warehouse(str(tmp_path))
    version = wh.write_table("users", iter([_users(1, 4), _users(4, 9), _users(9, 10)]))
    assert wh.read("users").sort_by("user_id").column("user_id").to_pylist() == list(range(1, 10))
    assert version == 0 and wh.version("users") == 0


def test_a_bad_later_chunk_is_its_value_error_and_commits_nothing(tmp_path):
    wh = Warehouse(str(tmp_path))
    wh.write_table("users", _users(1, 3))
    with pytest.raises(ValueError, match="users: missing column"):
        wh.write_table("users", iter([_users(10, 12), _users(12, 14).drop_columns(["age"])]))
    assert wh.version("users") == 0 and wh.read("users").num_rows == 2
    with pytest.raises(ValueError, match="no chunks"):
        wh.write_table("users", iter([]))
