"""The Python-side user join (stages.join.merge) against the per-row reference (each sample row carrying its
user's list, stages.join.similarity.lum_columns), across Arrow batch boundaries; and the output check on the
written files' stats (stages.join.checks.OutputCheck)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from stages.join.checks import OutputCheck
from stages.join.merge import merge_partition
from stages.join.similarity import lum_columns
from stages.join.spec import DEFAULT_SPEC
from stages.warehouse.commit import DataFile
from stages.warehouse.stats import FileStats

N_EXT, N_COND, DIM = 4, 3, 5
ENTRY = pa.list_(pa.struct([("i", pa.int32()), ("e", pa.list_(pa.float32()))]))
NAMES = ["user_id", "item_id", "lum_match", "lum_target_match", "lum_user", "lum_item", "lum_knowledge_ds",
         "lum_model_version"]
OPTIONS = {"sample_cols": NAMES[:2], "names": NAMES, "n_cond": N_COND, "n_ext": N_EXT, "dim": DIM,
           "knowledge_ds": "2000-01-01", "model_version": "m1", "wanted": frozenset(DEFAULT_SPEC.features)}


def _data(seed: int = 0):
    """Sorted (key, tag) rows: users 1..5 (user 3 has no knowledge row, user 5 two samples in a later batch),
    a sample with a null user first (Spark sorts nulls first); item 9 has no vector. Every user row has
    samples, as the join's semi-join makes sure."""
    rng = np.random.default_rng(seed)
    entries = {u: [{"i": c, "e": rng.normal(size=DIM).astype(np.float32).tolist()}
                   for c in range(N_EXT) if rng.random() > 0.3 or c == 0] for u in (1, 2, 4, 5)}
    items = {i: rng.normal(size=DIM).astype(np.float32).tolist() for i in range(8)}
    samples = {None: [2], 1: [0, 1, 9], 2: [3], 3: [4, 5], 4: [6], 5: [7, 0]}
    rows = []
    for user, its in samples.items():
        if user in entries:
            rows.append({"user_id": None, "item_id": None, "_tidx": None, "_ie": None, "_key": user, "_tag": 0,
                         "_ulist": entries[user]})
        for item in its:
            rows.append({"user_id": user, "item_id": item, "_tidx": item % N_EXT if item != 2 else None,
                         "_ie": items.get(item), "_key": user, "_tag": 1, "_ulist": None})
    schema = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("_tidx", pa.int32()),
                        ("_ie", pa.list_(pa.float32())), ("_key", pa.int64()), ("_tag", pa.int32()), ("_ulist", ENTRY)])
    return pa.Table.from_pylist(rows, schema=schema), entries, items


def _reference(table: pa.Table, entries: dict) -> pa.Table:
    samples = table.filter(pa.compute.equal(table.column("_tag"), 1))
    ulist = pa.array([entries.get(u) for u in samples.column("user_id").to_pylist()], ENTRY)
    lum = lum_columns(ulist, samples.column("_tidx"), samples.column("_ie"), n_cond=N_COND, n_ext=N_EXT, dim=DIM,
                      knowledge_ds="2000-01-01", model_version="m1", wanted=OPTIONS["wanted"])
    return pa.table([samples.column("user_id"), samples.column("item_id")] + [lum[n] for n in NAMES[2:]], names=NAMES)


def _sorted(table: pa.Table) -> list[dict]:
    return sorted(table.to_pylist(), key=lambda r: (r["user_id"] is not None, r["user_id"] or 0, r["item_id"]))


@pytest.mark.parametrize("batch_rows", [1, 2, 3, 100])  # user rows and their samples in different batches
def test_merge_matches_the_per_row_reference(batch_rows):
    table, entries, items = _data()
    got = pa.Table.from_batches(list(merge_partition(table.to_batches(max_chunksize=batch_rows), **OPTIONS)))
    expected = _reference(table, entries)
    assert got.num_rows == expected.num_rows == 10
    assert _sorted(got) == _sorted(expected)
    rows = {(r["user_id"], r["item_id"]): r for r in got.to_pylist()}
    assert rows[(3, 4)]["lum_match"] is None and rows[(None, 2)]["lum_knowledge_ds"] is None  # no user knowledge
    assert rows[(1, 9)]["lum_item"] is None and rows[(1, 0)]["lum_knowledge_ds"] == "2000-01-01"
    # the item vectors looked up in Python give the same rows as vectors carried by each sample
    ids = np.array(sorted(items), np.int64)
    table_items = (ids, np.array([items[i] for i in ids], np.float32))
    looked_up = merge_partition(table.drop_columns(["_ie"]).to_batches(max_chunksize=batch_rows), **OPTIONS,
                                items=table_items)
    assert _sorted(pa.Table.from_batches(list(looked_up))) == _sorted(expected)


@pytest.mark.parametrize("batch_rows", [1, 3, 100])
@pytest.mark.parametrize("where", ["first", "last"])
def test_a_user_row_without_its_samples_in_the_task_fails_the_job(batch_rows, where):
    """The two sides partitioned apart (a union that concatenated rather than zipped its partitions) would leave
    samples silently without knowledge; a user row not followed by a sample of its key is an error instead."""
    table, _, _ = _data()
    key = 0 if where == "first" else 9
    row = table.slice(1, 1).to_pylist()[0] | {"_key": key}
    assert row["_tag"] == 0
    lone = pa.Table.from_pylist([row], schema=table.schema)
    table = pa.concat_tables([table.slice(0, 1), lone, table.slice(1)] if where == "first" else [table, lone])
    with pytest.raises(RuntimeError, match=f"knowledge of user_id {key} reached a Spark task without"):
        list(merge_partition(table.to_batches(max_chunksize=batch_rows), **OPTIONS))


def _stats(rows: int, nulls: int | None) -> FileStats:
    return FileStats(size=1, stats={"numRecords": rows, "minValues": {}, "maxValues": {},
                                    "nullCount": {} if nulls is None else {"lum_knowledge_ds": nulls}})


def test_output_check_counts_rows_and_rows_without_knowledge_from_file_stats():
    check = OutputCheck(None, DEFAULT_SPEC, "/nowhere", {"2000-01-02": 5, "2000-01-03": 0})
    check([(DataFile("a/ds=2000-01-02/x.parquet", "2000-01-02"), _stats(3, 1)),
           (DataFile("a/ds=2000-01-02/y.parquet", "2000-01-02"), _stats(2, 2))])
    assert check.without == {"2000-01-02": 3, "2000-01-03": 0}
    with pytest.raises(ValueError, match="join fan-out: 6 output rows for 5 samples of 2000-01-02"):
        check([(DataFile("a/ds=2000-01-02/x.parquet", "2000-01-02"), _stats(6, 0))])
    with pytest.raises(ValueError, match="rows of ds=2000-01-04, outside the days being written"):
        check([(DataFile("a/ds=2000-01-04/x.parquet", "2000-01-04"), _stats(1, 0))])


def test_output_check_runs_the_knowledge_check_first_and_counts_nulls_without_stats(spark, tmp_path):
    import pyarrow.parquet as pq

    day = "2000-01-02"
    (tmp_path / f"ds={day}").mkdir()
    pq.write_table(pa.table({"lum_knowledge_ds": ["2000-01-01", None, None]}), tmp_path / f"ds={day}" / "x.parquet")
    calls = []
    check = OutputCheck(spark, DEFAULT_SPEC, str(tmp_path), {day: 3}, before=lambda: calls.append("knowledge"))
    check([(DataFile(f"ds={day}/x.parquet", day), _stats(3, None))])  # no null count recorded: read the column
    assert calls == ["knowledge"] and check.without == {day: 2}
