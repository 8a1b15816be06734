"""The join reads only the knowledge of the day's sample users: a defect (duplicate key, another model version,
another width) in another user's knowledge rows is never read, the same defect in a sample user's rows is an
error naming the table; nothing goes through pandas on the driver."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from tests.stages.join.test_join import DIM, knowledge, make_warehouse, run_join, sorted_rows

K_DS = "2001-01-04"


def _append_bad_rows(wh, user_id: int, problem: str) -> None:
    """user_knowledge[K_DS] rows of ``user_id`` written around validation: two more rows of an existing key
    (``duplicate``), or one of another model version (``version``) or width (``width``), which the check names
    before the key it repeats."""
    from deltalake import write_deltalake

    dim = DIM + 1 if problem == "width" else DIM
    uk, _ = knowledge(K_DS, seed=5, version="lum-other" if problem == "version" else f"lum-{K_DS}", dim=dim,
                      users=(user_id,))
    row = uk.slice(0, 1)
    row = row.set_column(row.schema.get_field_index("embedding"), "embedding",
                         row.column("embedding").cast(pa.list_(pa.float32())))
    rows = pa.concat_tables([row, row] if problem == "duplicate" else [row])
    rows = rows.append_column("ds", pa.array([K_DS] * rows.num_rows))
    for field in wh.delta_table("user_knowledge").schema().to_arrow():  # columns the test rows lack: nulls
        if field.name not in rows.column_names:
            rows = rows.append_column(pa.field(field.name, pa.float32()), pa.nulls(rows.num_rows, pa.float32()))
    write_deltalake(wh.table_uri("user_knowledge"), rows, mode="append", partition_by=["ds"])


ERRORS = {"duplicate": rf"user_knowledge\[{K_DS}\] has 2 duplicated key",
          "version": rf"user_knowledge\[{K_DS}\] must hold exactly one model_version, got \['lum-{K_DS}', 'lum-other'\]",
          "width": rf"user_knowledge\[{K_DS}\] has embeddings of widths {DIM}..{DIM + 1}"}


@pytest.mark.parametrize("problem", sorted(ERRORS))
@pytest.mark.parametrize("user_id", [99, 1])  # 99: no samples; 1: samples and rows of that user already
def test_only_the_sample_users_knowledge_is_checked_and_joined(spark, warehouse, user_id, problem):
    wh = make_warehouse(warehouse)
    if user_id == 99:
        run_join(wh)
        expected = sorted_rows(wh.read("dlrm_training", ds="2001-01-05"))
    _append_bad_rows(wh, user_id, problem)
    if user_id == 1:  # checked on what the write joined, before the commit: nothing is committed
        with pytest.raises(ValueError, match=ERRORS[problem]):
            run_join(wh)
        assert not wh.exists("dlrm_training")
        assert not list(Path(wh.table_uri("dlrm_training")).glob("arrow-*"))
        return
    summary = run_join(wh)
    assert summary["rows"] == 11 and summary["knowledge_ds"] == K_DS and summary["rows_without_knowledge"] == 2
    assert sorted_rows(wh.read("dlrm_training", ds="2001-01-05")) == expected


def test_no_pandas_on_the_driver(spark, warehouse, monkeypatch):
    """Neither items nor knowledge nor output go through pandas: a pandas DataFrame handed to Spark, or any
    ``toPandas``, fails the run."""
    from pyspark.sql import DataFrame as BaseFrame

    wh = make_warehouse(warehouse)
    session = type(spark)
    original = session.createDataFrame

    def no_pandas(self, data, *args, **kwargs):
        assert type(data).__module__.split(".")[0] != "pandas", "a pandas DataFrame was handed to Spark"
        return original(self, data, *args, **kwargs)

    monkeypatch.setattr(session, "createDataFrame", no_pandas)
    for frame in {BaseFrame, type(spark.range(1))}:
        monkeypatch.setattr(frame, "toPandas", lambda self: pytest.fail("toPandas on the driver"))
    summary = run_join(wh)
    assert summary["rows"] == 11 and summary["rows_without_knowledge"] == 2


def test_item_vectors_joined_in_spark_give_the_same_rows(spark, warehouse):
    """broadcast_items=false: the sample items' knowledge stays in Spark (cached, checked there, joined to each
    sample row) instead of going to the Python tasks; the rows are the same."""
    wh = make_warehouse(warehouse)
    run_join(wh)
    expected = sorted_rows(wh.read("dlrm_training", ds="2001-01-05"))
    summary = run_join(wh, broadcast_items=False)
    assert summary["rows"] == 11 and summary["rows_without_knowledge"] == 2
    assert sorted_rows(wh.read("dlrm_training", ds="2001-01-05")) == expected
