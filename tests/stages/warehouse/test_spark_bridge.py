"""The Spark bridge: Spark reads what delta-rs reads; Spark writes land in ONE delta-rs commit."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pytest
from deltalake import DeltaTable

from stages.warehouse.facade import Warehouse

UTC = dt.UTC


def events_of(day: str, users: list[int]) -> pa.Table:
    d = dt.date.fromisoformat(day)
    return pa.table({
        "user_id": pa.array(users, pa.int64()),
        "item_id": pa.array([100 + u for u in users], pa.int64()),
        "ts": pa.array([dt.datetime(d.year, d.month, d.day, u % 24, tzinfo=UTC) for u in users],
                       pa.timestamp("us", "UTC")),
        "scenario": ["rating"] * len(users),
        "rating": pa.array([None if u % 3 == 0 else float(u % 5) for u in users], pa.float32()),
        "event_idx": pa.array(users, pa.int64()),
    })


def knowledge(users: list[int]) -> pa.Table:
    return pa.table({
        "user_id": pa.array(users, pa.int64()),
        "condition": [f"category=C{u % 2},scenario=rating" for u in users],
        "embedding": [[u / 2, -u / 4, 1.0] for u in users],
        "model_version": ["lum-2000-12-01"] * len(users),
        "history_len": pa.array(users, pa.int32()),
        "condition_logprob": pa.array([-u / 8 for u in users], pa.float32()),
        "temperature": pa.array([0.05] * len(users), pa.float32()),
    })


def spark_rows(df) -> list[tuple]:
    """Rows of a Spark DataFrame, timestamps as epoch microseconds, sorted."""
    from pyspark.sql import functions as F

    cols = [F.unix_micros(c).alias(c) if c == "ts" else F.col(c) for c in df.columns]
    return sorted(tuple(r) for r in df.select(*cols).collect())


def arrow_rows(table: pa.Table, columns: list[str]) -> list[tuple]:
    table = table.select(columns)
    if "ts" in columns:
        table = table.set_column(columns.index("ts"), "ts", table.column("ts").cast(pa.int64()))
    out = []
    for row in table.to_pylist():
        out.append(tuple(tuple(v) if isinstance(v, list) else v for v in row.values()))
    return sorted(out)


def normalize(rows: list[tuple]) -> list[tuple]:
    return sorted(tuple(tuple(v) if isinstance(v, list) else v for v in r) for r in rows)


@pytest.fixture
def wh(tmp_path) -> Warehouse:
    """A warehouse whose path needs escaping (space, '+', '%') with two days of events."""
    w = Warehouse(str(tmp_path / "w h+%x"))
    w.write_partition("events", events_of("2000-12-01", [1, 2, 3, 4]), ds="2000-12-01")
    w.write_partition("events", events_of("2000-12-02", [5, 6, 7]), ds="2000-12-02")
    return w


def test_read_spark_equals_delta_rs(spark, wh):
    df = wh.read_spark(spark, "events")
    assert df.columns == wh.read("events").column_names
    assert spark_rows(df) == arrow_rows(wh.read("events"), df.columns)
    one = wh.read_spark(spark, "events", ds="2000-12-02")
    assert spark_rows(one) == arrow_rows(wh.read("events", ds="2000-12-02"), one.columns)
    old = wh.read_spark(spark, "events", version=0)
    assert {r.ds for r in old.select("ds").distinct().collect()} == {"2000-12-01"}
    assert wh.read_spark(spark, "events", start="2000-12-03").count() == 0


def test_spark_written_partition_read_back_identically(spark, wh):
    source = wh.read_spark(spark, "events", ds="2000-12-02").drop("ds")
    version = wh.write_spark_partition("events", source, ds="2000-12-03", app_id="t1")
    assert version == 2 and wh.partitions("events") == ["2000-12-01", "2000-12-02", "2000-12-03"]
    cols = wh.read("events").column_names
    by_spark = spark_rows(wh.read_spark(spark, "events", ds="2000-12-03"))
    dt_ = DeltaTable(wh.table_uri("events"))
    by_deltalake = arrow_rows(
        pa.table(dt_.to_pyarrow_table(filters=[("ds", "=", "2000-12-03")])), cols)
    by_pyarrow = arrow_rows(
        dt_.to_pyarrow_dataset().to_table(filter=pads.field("ds") == "2000-12-03"), cols)
    by_warehouse = arrow_rows(wh.read("events", ds="2000-12-03"), cols)
    expected = [r[:-1] + ("2000-12-03",) for r in arrow_rows(wh.read("events", ds="2000-12-02"), cols)]
    assert by_spark == by_deltalake == by_pyarrow == by_warehouse == sorted(expected)
    assert len(wh.history("events")) == 3  # ONE commit for the Spark write


def test_spark_write_of_embeddings_roundtrips(spark, warehouse):
    wh = Warehouse(warehouse)
    df = spark.createDataFrame(knowledge([1, 2, 3]).to_pandas())  # embedding arrives as array<double>
    wh.write_spark_partition("user_knowledge", df, ds="2000-12-02")
    got = wh.read("user_knowledge")
    assert got.schema.field("embedding").type == pa.list_(pa.float32(), 3)
    expected = knowledge([1, 2, 3]).append_column("ds", pa.array(["2000-12-02"] * 3))
    cols = got.column_names
    assert arrow_rows(got, cols) == arrow_rows(expected.select(cols).cast(got.schema), cols)
    assert normalize(spark_rows(wh.read_spark(spark, "user_knowledge"))) == arrow_rows(got, cols)
    # files written by delta-rs (write_partition) and by pyarrow (staged) read the same through Spark
    wh.write_partition("user_knowledge", knowledge([4, 5]), ds="2000-12-01")
    stager = wh.stage_partition("user_knowledge", ds="2000-12-03", run_id="r")
    stager.write(knowledge([6]))
    stager.finish()
    wh.commit_staged("user_knowledge", ds="2000-12-03", run_id="r")
    got = wh.read("user_knowledge")
    assert got.num_rows == 6
    assert normalize(spark_rows(wh.read_spark(spark, "user_knowledge"))) == arrow_rows(got, cols)
    # optional columns (TableSpec.optional) that a Spark writer omits arrive as null
    bare = spark.createDataFrame(knowledge([7]).drop_columns(["condition_logprob", "temperature"]).to_pandas())
    wh.write_spark_partition("user_knowledge", bare, ds="2000-12-04")
    assert wh.read("user_knowledge", ds="2000-12-04").column("condition_logprob").to_pylist() == [None]


def test_failed_spark_write_leaves_version_and_rows_unchanged(spark, wh):
    from pyspark.sql import functions as F
    from pyspark.sql.types import LongType

    @F.udf(LongType())
    def explode_on_six(user_id):
        if user_id == 6:
            raise RuntimeError("boom on row 6")
        return user_id

    before_rows, before_version = wh.read("events"), wh.version("events")
    source = wh.read_spark(spark, "events", ds="2000-12-02")
    bad = source.withColumn("user_id", explode_on_six("user_id"))
    with pytest.raises(Exception, match="boom on row 6"):
        wh.write_spark_partition("events", bad, ds="2000-12-02")
    assert wh.version("events") == before_version
    assert arrow_rows(wh.read("events"), before_rows.column_names) == arrow_rows(
        before_rows, before_rows.column_names)
    assert not list(Path(wh.table_uri("events")).glob("spark-*"))  # its files were removed


def test_rows_outside_partition_refused(spark, wh):
    both = wh.read_spark(spark, "events")  # two days
    with pytest.raises(ValueError, match="belongs to partition 2000-12-01, not 2000-12-02"):
        wh.write_spark_partition("events", both, ds="2000-12-02")
    assert wh.version("events") == 1
    assert wh.read("events", ds="2000-12-02").num_rows == 3


def test_retried_spark_commit_applies_once(spark, wh):
    source = wh.read_spark(spark, "events", ds="2000-12-01").drop("ds")
    v1 = wh.write_spark_partition("events", source, ds="2000-12-05", app_id="run-7")
    v2 = wh.write_spark_partition("events", source, ds="2000-12-05", app_id="run-7")
    assert v1 == v2 == wh.version("events")
    assert wh.read("events", ds="2000-12-05").num_rows == 4
    assert len(list(Path(wh.table_uri("events")).glob("spark-*"))) == 1


def test_read_spark_unpartitioned_table(spark, wh):
    items = pa.table({"item_id": pa.array([2, 1], pa.int64()), "title": ["b", "a"], "category": ["Y", "X"],
                      "categories": [["Y", "X"], ["X"]]})
    wh.write_table("items", items)
    df = wh.read_spark(spark, "items")
    assert df.columns == ["item_id", "title", "category", "categories"]
    assert sorted(tuple(r) for r in df.collect()) == [(1, "a", "X", ["X"]), (2, "b", "Y", ["Y", "X"])]
    with pytest.raises(ValueError, match="not partitioned"):
        wh.read_spark(spark, "items", ds="2000-12-01")


def test_spark_write_with_duplicate_key_refused(spark, wh):
    before_rows, before_version = wh.read("events"), wh.version("events")
    source = wh.read_spark(spark, "events", ds="2000-12-02").drop("ds")
    doubled = source.unionByName(source.filter("user_id = 6"))
    with pytest.raises(ValueError) as info:
        wh.write_spark_partition("events", doubled, ds="2000-12-02")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("table events ds=2000-12-02: key (user_id, item_id, ts, scenario) appears 2 times: "
                              "user_id=6, item_id=106, ts='2000-12-02 06:00:00', scenario='rating'")
    assert wh.version("events") == before_version
    assert arrow_rows(wh.read("events"), before_rows.column_names) == arrow_rows(
        before_rows, before_rows.column_names)
    assert not list(Path(wh.table_uri("events")).glob("spark-*"))  # the refused files were removed


def test_spark_write_of_many_days_checks_keys_per_day(spark, wh):
    from pyspark.sql import functions as F

    from stages.warehouse.spark_bridge import write_spark_partitions

    one = wh.read_spark(spark, "events", ds="2000-12-01")
    both = one.unionByName(one.withColumn("ds", F.lit("2000-12-03")))  # the same keys on two days: fine
    version = write_spark_partitions(wh, "events", both, days=["2000-12-01", "2000-12-03"])
    assert version == 2 and wh.read("events", ds="2000-12-03").num_rows == 4
    nulled = both.withColumn("user_id", F.when(F.col("user_id") == 2, None).otherwise(F.col("user_id")))
    with pytest.raises(ValueError, match=r"ds=2000-12-0[13]: key \(user_id, item_id, ts, scenario\) has a null "
                                         r"user_id: user_id=None, item_id=102"):
        write_spark_partitions(wh, "events", nulled, days=["2000-12-01", "2000-12-03"])
    assert wh.version("events") == 2


def test_read_spark_of_a_deleted_data_file_names_it(spark, wh):
    gone = next(Path(wh.table_uri("events")).glob("ds=2000-12-02/*.parquet"))
    gone.unlink()
    with pytest.raises(ValueError, match=rf"^table events: data file ds=2000-12-02/{gone.name} is missing"):
        wh.read_spark(spark, "events")
    assert wh.read_spark(spark, "events", ds="2000-12-01").count() == 4  # other partitions still read
    with pytest.raises(ValueError, match=rf"^table events: data file ds=2000-12-02/{gone.name} is missing"):
        wh.read("events")
