"""schemas/: every table's contract, and every validation failure named in one line."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

import schemas
from schemas import dlrm_training, events, items, user_knowledge, user_sequences
from schemas._base import to_spark_struct

UTC = dt.UTC
DAY = "2000-12-01"


def _events(n: int = 3, **overrides) -> pa.Table:
    cols = {
        "user_id": pa.array(range(n), pa.int64()),
        "item_id": pa.array([10 + i for i in range(n)], pa.int64()),
        "ts": pa.array([dt.datetime(2000, 12, 1, 5, i, tzinfo=UTC) for i in range(n)],
                       pa.timestamp("us", "UTC")),
        "scenario": ["rating"] * n,
        "rating": pa.array([4.0] * n, pa.float32()),
        "event_idx": pa.array(range(n), pa.int64()),
        "ds": [DAY] * n,
    }
    cols.update(overrides)
    return pa.table(cols)


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("name", schemas.TABLES)
def test_every_table_has_a_consistent_contract(name):
    mod = schemas.get(name)
    assert name == mod.NAME
    sch = mod.schema(8)
    assert set(mod.KEY) <= set(sch.names)
    assert mod.PARTITION_BY in (("ds",), ())
    assert ("ds" in sch.names) == bool(mod.PARTITION_BY)
    for key in mod.KEY + mod.PARTITION_BY:
        assert not sch.field(key).nullable, key
    assert [f.name for f in mod.spark_schema(8).fields] == sch.names
    empty = mod.validate(sch.empty_table(), ds=DAY if mod.PARTITION_BY else None)
    assert empty.num_rows == 0


def test_contract_minimum_columns():
    assert events.schema().field("ts").type == pa.timestamp("us", tz="UTC")
    assert user_knowledge.schema(16).field("embedding").type == pa.list_(pa.float32(), 16)
    names = dlrm_training.schema(4).names
    assert names[:7] == schemas.get("dlrm_samples").schema().names
    for col in ("lum_match", "lum_target_match", "lum_user", "lum_item", "lum_knowledge_ds",
                "lum_model_version"):
        assert col in names


def test_validate_casts_and_fills_ds():
    table = _events().drop_columns(["ds"])
    table = table.set_column(0, "user_id", pa.array([1, 2, 3], pa.int32()))
    out = events.validate(table, ds=DAY)
    assert out.schema == events.schema()
    assert out.column("ds").to_pylist() == [DAY] * 3
    assert out.column("user_id").to_pylist() == [1, 2, 3]


def test_missing_column():
    msg = _error(events.validate, _events().drop_columns(["scenario"]))
    assert "missing column(s) scenario" in msg


def test_unknown_column():
    msg = _error(events.validate, _events().append_column("oops", pa.array([1, 2, 3])))
    assert "unknown column(s) oops" in msg


def test_wrong_type():
    msg = _error(events.validate, _events(user_id=pa.array(["1", "x", "3"])))
    assert "column user_id" in msg and "int64" in msg


def test_null_key_shows_the_row():
    msg = _error(events.validate, _events(item_id=pa.array([1, None, 3], pa.int64())))
    assert "column item_id has 1 null" in msg and "user_id=1" in msg


def test_duplicate_key_shows_the_key():
    table = _events(user_id=pa.array([5, 5, 6], pa.int64()), item_id=pa.array([1, 1, 2], pa.int64()),
                    ts=pa.array([dt.datetime(2000, 12, 1, tzinfo=UTC)] * 3, pa.timestamp("us", "UTC")))
    msg = _error(events.validate, table)
    assert "1 duplicated" in msg and "user_id=5" in msg and "count_all=2" in msg


@pytest.mark.parametrize("bad", ["2000-13-01", "2000-12-1", "20001201", "2000-02-30"])
def test_bad_ds(bad):
    msg = _error(events.validate, _events(ds=[DAY, bad, DAY]))
    assert "column ds" in msg and bad in msg


def test_bad_ds_argument():
    assert "ds must be YYYY-MM-DD" in _error(events.validate, _events(), ds="12/01/2000")


def test_row_outside_partition():
    msg = _error(events.validate, _events(ds=[DAY, "2000-12-02", DAY]), ds=DAY)
    assert "1 row(s) outside partition 2000-12-01" in msg and "2000-12-02" in msg


def test_error_shows_at_most_five_rows():
    n = 9
    msg = _error(events.validate, _events(n, item_id=pa.array([None] * n, pa.int64())))
    assert msg.count("{") == 5


def test_unpartitioned_table_refuses_ds():
    table = pa.table({"item_id": [1], "title": ["t"], "category": ["c"], "categories": [["c"]]})
    assert items.validate(table).num_rows == 1
    assert "not partitioned" in _error(items.validate, table, ds=DAY)


def test_embedding_dim_inferred_and_checked():
    table = pa.table({"user_id": [1, 2], "condition": ["category=A", "category=B"],
                      "embedding": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], "model_version": ["m", "m"],
                      "history_len": [3, 4]})
    out = user_knowledge.validate(table, ds=DAY)
    assert out.schema.field("embedding").type == pa.list_(pa.float32(), 3)
    bad = table.set_column(2, "embedding", pa.array([[1.0, 2.0, 3.0], [4.0]]))
    assert "lengths 1..3" in _error(user_knowledge.validate, bad, ds=DAY)


def test_user_sequences_lists_must_align():
    ts = [dt.datetime(2000, 12, 1, tzinfo=UTC)]
    table = pa.table({"user_id": [1], "item_ids": [[1, 2]], "conditions": [["category=A", "category=B"]],
                      "ts": [ts * 2], "ratings": [[4.0, 5.0]], "history_len": [2], "total_events": [2]})
    assert user_sequences.validate(table, ds=DAY).num_rows == 1
    msg = _error(user_sequences.validate, table.set_column(3, "ts", pa.array([ts])), ds=DAY)
    assert "column ts length differs" in msg
    msg = _error(user_sequences.validate, table.set_column(5, "history_len", pa.array([5])), ds=DAY)
    assert "history_len" in msg
    assert user_sequences.validate(table, ds=DAY).column("bucket").null_count == 1  # older rows: no bucket
    assert user_sequences.validate(table.append_column("bucket", pa.array([3])), ds=DAY)["bucket"][0].as_py() == 3
    msg = _error(user_sequences.validate, table.append_column("bucket", pa.array([-1])), ds=DAY)
    assert "column bucket must be >= 0" in msg


def test_conditions_metadata_roundtrip():
    conds = ["category=Comedy", "category=Drama,scenario=rating"]
    assert dlrm_training.decode_conditions(dlrm_training.encode_conditions(conds)) == conds
    with pytest.raises(ValueError):
        dlrm_training.decode_conditions('{"a": 1}')


def test_get_unknown_table():
    assert "unknown table" in _error(schemas.get, "nope")


def test_to_spark_struct_types():
    from pyspark.sql import types as T

    struct = to_spark_struct(dlrm_training.schema(4))
    by_name = {f.name: f.dataType for f in struct.fields}
    assert by_name["user_id"] == T.LongType() and by_name["label"] == T.IntegerType()
    assert by_name["ts"] == T.TimestampType() and by_name["rating"] == T.FloatType()
    assert by_name["lum_user"] == T.ArrayType(T.FloatType(), True)
    assert not struct["ds"].nullable and struct["rating"].nullable
    with pytest.raises(ValueError, match="column x"):
        to_spark_struct(pa.schema([("x", pa.dictionary(pa.int8(), pa.string()))]))


def test_user_knowledge_optional_columns_and_their_checks():
    table = pa.table({"user_id": [1, 2], "condition": ["category=A", "category=B"],
                      "embedding": [[1.0, 0.0], [0.0, 1.0]], "model_version": ["m", "m"], "history_len": [3, 4]})
    out = user_knowledge.validate(table, ds=DAY)  # written before the columns existed: nulls
    assert out.column("condition_logprob").null_count == 2 and out.column("temperature").null_count == 2
    good = table.append_column("condition_logprob", pa.array([-0.1, -2.3])).append_column("temperature",
                                                                                          pa.array([0.05, 0.05]))
    assert user_knowledge.validate(good, ds=DAY).column("temperature").type == pa.float32()
    assert "condition_logprob must be finite and <= 0" in _error(
        user_knowledge.validate, good.set_column(5, "condition_logprob", pa.array([0.5, float("nan")])), ds=DAY)
    assert "temperature must be finite and > 0" in _error(
        user_knowledge.validate, good.set_column(6, "temperature", pa.array([0.0, 0.05])), ds=DAY)
