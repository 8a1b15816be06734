"""The join reads only the knowledge of the day's sample users: a defect in another user's knowledge rows is
never read, the same defect in a sample user's rows is an error naming the table."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tests.stages.join.test_join import knowledge, make_warehouse, run_join, sorted_rows

K_DS = "2001-01-04"


def _append_duplicate_key(wh, user_id: int) -> None:
    """Two more user_knowledge[K_DS] rows of one (user_id, condition), written around validation."""
    from deltalake import write_deltalake

    uk, _ = knowledge(K_DS, seed=5, version=f"lum-{K_DS}", users=(user_id,))
    row = uk.slice(0, 1)
    row = row.set_column(row.schema.get_field_index("embedding"), "embedding",
                         row.column("embedding").cast(pa.list_(pa.float32())))
    rows = pa.concat_tables([row, row]).append_column("ds", pa.array([K_DS] * 2))
    for field in wh.delta_table("user_knowledge").schema().to_arrow():  # columns the test rows lack: nulls
        if field.name not in rows.column_names:
            rows = rows.append_column(pa.field(field.name, pa.float32()), pa.nulls(2, pa.float32()))
    write_deltalake(wh.table_uri("user_knowledge"), rows, mode="append", partition_by=["ds"])


@pytest.mark.parametrize("user_id", [99, 1])  # 99: no samples; 1: samples and a row of that key already
def test_only_the_sample_users_knowledge_is_checked_and_joined(spark, warehouse, user_id):
    wh = make_warehouse(warehouse)
    if user_id == 99:
        run_join(wh)
        expected = sorted_rows(wh.read("dlrm_training", ds="2001-01-05"))
    _append_duplicate_key(wh, user_id)
    if user_id == 1:
        with pytest.raises(ValueError, match=rf"user_knowledge\[{K_DS}\] has 2 duplicated key"):
            run_join(wh)
        assert not wh.exists("dlrm_training")
        return
    summary = run_join(wh)
    assert summary["rows"] == 11 and summary["knowledge_ds"] == K_DS and summary["rows_without_knowledge"] == 2
    assert sorted_rows(wh.read("dlrm_training", ds="2001-01-05")) == expected
