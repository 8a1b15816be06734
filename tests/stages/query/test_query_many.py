"""query_many returns exactly the rows a plain filter of the partition returns: users spread over several files
with overlapping ranges and small row groups, ids absent, duplicated, negative or far apart, one condition or
all, an older table version; rows come grouped by user in ascending order."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from stages.query.lookup import query_many
from stages.warehouse import scan
from stages.warehouse.facade import Warehouse
from tests.stages.query.test_query import CONDITIONS, knowledge

DAY = "2000-01-01"
USERS = list(range(1, 61))


def _stage(wh: Warehouse, shift: float, run_id: str) -> None:
    """Day DAY in 3 files: user u's condition i in file (u + i) % 3, each file sorted by user, groups of 4 rows."""
    rows = knowledge(DAY, USERS, version=f"lum-{run_id}", shift=shift)
    where = (pc.add(rows.column("user_id"), pa.array(np.tile(np.arange(len(CONDITIONS)), len(USERS))))).to_numpy() % 3
    stager = wh.stage_partition("user_knowledge", ds=DAY, run_id=run_id)
    for f in range(3):
        stager.write(rows.filter(pa.array(where == f)), row_group_size=4)
    stager.finish()
    wh.commit_staged("user_knowledge", ds=DAY, run_id=run_id)


@pytest.fixture
def spread(warehouse, monkeypatch) -> str:
    monkeypatch.setattr(scan, "GROUPS_PER_READ", 2)  # several read jobs per file
    wh = Warehouse(warehouse)
    _stage(wh, 0.0, "a")  # version 0
    _stage(wh, 5.0, "b")  # version 1: the day rewritten with other embeddings
    return warehouse


def plain(warehouse: str, ids, conditions=None, version=None) -> list[dict]:
    table = Warehouse(warehouse).read("user_knowledge", ds=DAY, version=version)
    mask = pc.is_in(table.column("user_id"), pa.array(np.asarray(ids, np.int64)))
    if conditions:
        mask = pc.and_(mask, pc.is_in(table.column("condition"), pa.array(conditions)))
    return table.filter(mask).sort_by([("user_id", "ascending"), ("condition", "ascending")]).to_pylist()


@pytest.mark.parametrize("ids", [
    [7],  # one user, its rows in 3 files
    [3, 3, 9, 1, 999, -4, 60, 9],  # duplicates, unknown and negative ids, the last user
    list(range(-5, 80, 2)),  # a dense batch: the bitmap
    [2, 31, 10**15, 2**62],  # far apart: the binary search
    USERS,  # every user
    [1000, 2000],  # none present
])
@pytest.mark.parametrize("conditions", [None, ["category=Comedy"]])
def test_query_many_is_a_plain_filter(spread, ids, conditions):
    for version in (None, 0):
        out = query_many(spread, pa.array(ids, pa.int64()), ds=DAY, conditions=conditions, version=version)
        users = out.column("user_id").to_numpy()
        assert (users[1:] >= users[:-1]).all()  # grouped by user, ascending
        got = out.sort_by([("user_id", "ascending"), ("condition", "ascending")]).to_pylist()
        assert got == plain(spread, ids, conditions, version)
        assert {e[1] for e in out.column("embedding").to_pylist()} <= {0.0 if version == 0 else 5.0}
    if got:
        assert out.schema.field("embedding").type == pa.list_(pa.field("element", pa.float32()), 4)
