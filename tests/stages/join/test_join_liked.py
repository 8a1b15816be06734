"""The join over knowledge asked with the feedback feature ``liked``: liked=yes fills the usual LUM columns,
liked=no ``lum_target_match_disliked``; values against numpy from the knowledge tables."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from stages.join.spec import JoinSpec
from tests.stages.join.test_join import CATS, DIM, ITEM_CAT, D, cos, items_table, run_join, samples_table, sorted_rows

K_DS = "2001-01-04"
MISSING = {(3, "A", "no"), (2, "B", "yes")}  # user 3 was never asked liked=no under A, user 2 liked=yes under B


def liked_knowledge(seed: int = 1) -> tuple[pa.Table, pa.Table]:
    rng = np.random.default_rng(seed)
    rows = [(u, f"category={c},liked={v}", rng.normal(size=DIM).astype(np.float32).tolist())
            for u in (1, 2, 3) for c in CATS for v in ("no", "yes") if (u, c, v) not in MISSING]
    rows.append((1, "category=A,liked=<unk>", (100 * rng.normal(size=DIM)).astype(np.float32).tolist()))  # ignored
    uk = pa.table({"user_id": pa.array([r[0] for r in rows], pa.int64()), "condition": [r[1] for r in rows],
                   "embedding": pa.array([r[2] for r in rows], pa.list_(pa.float32(), DIM)),
                   "model_version": ["lum-liked"] * len(rows), "history_len": pa.array([5] * len(rows), pa.int32())})
    items = (1, 2, 3, 4, 5, 7)
    ik = pa.table({"item_id": pa.array(items, pa.int64()),
                   "embedding": pa.array([rng.normal(size=DIM).astype(np.float32).tolist() for _ in items],
                                         pa.list_(pa.float32(), DIM)),
                   "model_version": ["lum-liked"] * len(items)})
    return uk, ik


def liked_warehouse(path: str):
    from stages.warehouse.facade import Warehouse

    wh = Warehouse(path)
    wh.write_table("items", items_table())
    wh.write_partition("dlrm_samples", samples_table(D), ds=D)
    uk, ik = liked_knowledge()
    wh.write_partition("user_knowledge", uk, ds=K_DS)
    wh.write_partition("item_knowledge", ik, ds=K_DS)
    return wh


def test_liked_knowledge_fills_the_columns_and_the_disliked_similarity(spark, warehouse):
    from schemas.dlrm_training import CONDITIONS_KEY, decode_conditions

    wh = liked_warehouse(warehouse)
    summary = run_join(wh)
    assert summary["rows"] == 11 and summary["knowledge_ds"] == K_DS and summary["rows_without_knowledge"] == 2
    out = wh.read("dlrm_training", ds=D)
    assert out.schema.field("lum_target_match_disliked").type == pa.float32()
    conds = decode_conditions(wh.table_metadata("dlrm_training")[CONDITIONS_KEY])
    assert conds == ["category=A", "category=B", "category=C"]
    user_vec = {(r["user_id"], r["condition"]): np.array(r["embedding"])
                for r in wh.read("user_knowledge", ds=K_DS).to_pylist()}
    item_vec = {r["item_id"]: np.array(r["embedding"]) for r in wh.read("item_knowledge", ds=K_DS).to_pylist()}
    seen = {"yes": 0, "no": 0}
    for row in sorted_rows(out):
        u, i = row["user_id"], row["item_id"]
        if u == 4 or i not in item_vec:  # no knowledge of the user or the item
            assert row["lum_target_match"] is None and row["lum_target_match_disliked"] is None
            assert row["lum_match"] is None
            continue
        for c, got in zip(conds, row["lum_match"]):
            want = user_vec.get((u, f"{c},liked=yes"))
            assert got is None if want is None else got == pytest.approx(cos(want, item_vec[i]), abs=1e-5)
        target = ITEM_CAT[i]
        for liked, column in (("yes", "lum_target_match"), ("no", "lum_target_match_disliked")):
            vec = user_vec.get((u, f"category={target},liked={liked}")) if target else None
            if vec is None:
                assert row[column] is None
            else:
                assert row[column] == pytest.approx(cos(vec, item_vec[i]), abs=1e-5)
                seen[liked] += 1
        yes = user_vec.get((u, f"category={target},liked=yes")) if target else None
        if yes is None:
            assert row["lum_user"] is None
        else:
            np.testing.assert_allclose(row["lum_user"], yes, rtol=1e-6)
    assert seen["yes"] >= 5 and seen["no"] >= 5
    rows = {(r["user_id"], r["item_id"]): r for r in sorted_rows(out)}
    assert rows[(3, 1)]["lum_target_match"] is not None and rows[(3, 1)]["lum_target_match_disliked"] is None
    assert rows[(2, 5)]["lum_target_match"] is None and rows[(2, 5)]["lum_target_match_disliked"] is not None


def test_knowledge_without_liked_leaves_the_disliked_column_null_and_older_tables_gain_it(spark, warehouse):
    from schemas import dlrm_training
    from tests.stages.join.test_join import make_warehouse

    wh = make_warehouse(warehouse)
    old_day = "2001-01-01"
    old = samples_table(old_day)
    for f in dlrm_training.schema(DIM):
        if f.name not in old.column_names and f.name != "ds":
            old = old.append_column(f.name, pa.nulls(old.num_rows, f.type))
    old = dlrm_training.validate(old, ds=old_day, dim=DIM).drop_columns(["lum_target_match_disliked"])
    write_deltalake(wh.table_uri("dlrm_training"), old, partition_by=["ds"])  # a table from before the column
    run_join(wh)
    out = wh.read("dlrm_training", ds=D)
    assert out.column("lum_target_match_disliked").null_count == 11
    assert out.column("lum_target_match").null_count < 11
    before = wh.read("dlrm_training", ds=old_day)
    assert before.num_rows == 11 and before.column("lum_target_match_disliked").null_count == 11


@pytest.mark.parametrize("fields", [{"conditions": ("category=A,liked=yes",)}, {"target_feature": "liked"}])
def test_a_spec_naming_liked_is_a_one_line_error(fields):
    with pytest.raises(ValueError, match="spec must not name feature 'liked'") as err:
        JoinSpec(**fields)
    assert "\n" not in str(err.value)
