"""sequences stage on ML-100K: last max_len behaviours per user, oldest first, stable tie-break."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.core.dates import day_end
from stages.core.hashing import bucket_of, shard_of
from stages.sequences import stage as sequences
from stages.warehouse import buckets
from stages.warehouse.facade import Warehouse


def _expected(wh: Warehouse, ds: str, max_len: int, features) -> pd.DataFrame:
    ev = wh.read("events", end=ds).to_pandas()
    ev = ev[ev["ts"] < pd.Timestamp(day_end(ds))]
    items = wh.read("items", columns=["item_id", "category"]).to_pandas()
    ev = ev.merge(items, on="item_id", how="left").sort_values(["user_id", "ts", "event_idx"], kind="stable")
    ev["liked"] = np.where(ev["rating"].isna(), "<unk>", np.where(ev["rating"] >= 4.0, "yes", "no"))
    ev["condition"] = ev[features[0]].map(lambda v: f"{features[0]}={v}")
    for f in features[1:]:
        ev["condition"] = ev["condition"] + f",{f}=" + ev[f].astype(str)
    return ev.groupby("user_id").tail(max_len).groupby("user_id"), ev.groupby("user_id").size()


@pytest.mark.parametrize("features", [("category",), ("category", "scenario"), ("category", "liked")])
def test_sequences_match_pandas_reference(ml100k_warehouse, copy_warehouse, features):
    wh_path = copy_warehouse(ml100k_warehouse)
    wh = Warehouse(wh_path)
    days = wh.partitions("events")
    ds = days[len(days) // 3]
    cfg = sequences.Config(max_len=7, condition_features=features, buckets=4)
    summary = sequences.run(cfg, ds=ds, warehouse=wh_path)
    got = wh.read("user_sequences", ds=ds).to_pandas().set_index("user_id").sort_index()
    assert summary["buckets"] == 4 and (got["bucket"] == bucket_of(got.index.to_numpy(), 4)).all()
    _check_one_bucket_per_file(wh, ds, 4)
    groups, totals = _expected(wh, ds, 7, features)
    assert summary["rows"] == len(got) == groups.ngroups
    assert summary.get("liked_unknown") == (0 if "liked" in features else None)  # every ML-100K event is rated
    assert (got["history_len"] <= 7).all() and (got["history_len"] >= 1).all()
    for uid, g in list(groups)[:200]:
        row = got.loc[uid]
        assert list(row["item_ids"]) == g["item_id"].tolist()
        assert list(row["conditions"]) == g["condition"].tolist()
        assert row["total_events"] == totals[uid]
        ts = pd.to_datetime(list(row["ts"]), utc=True)
        assert ts.is_monotonic_increasing
        assert (ts < pd.Timestamp(day_end(ds))).all()
    # rerun replaces the partition with the same rows
    sequences.run(cfg, ds=ds, warehouse=wh_path)
    again = wh.read("user_sequences", ds=ds).to_pandas().set_index("user_id").sort_index()
    assert len(again) == len(got)
    assert again["item_ids"].map(list).equals(got["item_ids"].map(list))


def _check_one_bucket_per_file(wh: Warehouse, ds: str, n: int) -> None:
    """Each file of partition ds holds one bucket, rows by user_id, and the log's stats say which."""
    lay = buckets.layout(wh, ds)
    assert lay.reason is None and lay.buckets == n and sorted(lay.files) == list(range(n))
    for b, rel in lay.files.items():
        part = pq.read_table(f"{wh.table_uri('user_sequences')}/{rel}", columns=["user_id", "bucket"])
        assert set(part.column("bucket").to_pylist()) == {b}
        assert (np.diff(part.column("user_id").to_numpy()) > 0).all()
    got = pa.Table.from_batches(list(buckets.iter_bucket_batches(wh, ds, index=1, count=2,
                                                                 columns=["user_id", "conditions"], batch_rows=50)))
    assert got.num_rows == sum(lay.rows[b] for b in lay.files if b % 2 == 1)
    assert (shard_of(got.column("user_id").to_numpy(), 2) == 1).all()
    assert pa.types.is_dictionary(got.schema.field("conditions").type.value_type)  # Spark's dictionary pages


def test_bad_config_and_missing_events(warehouse):
    with pytest.raises(ValueError, match="condition_features"):
        sequences.Config(condition_features=("genre",)).check()
    with pytest.raises(ValueError, match="does not exist"):
        sequences.run(sequences.Config(), ds="2000-01-01", warehouse=warehouse)


@pytest.mark.parametrize("options, message", [
    ({"condition_features": ("category", "taste")}, "condition_features must be distinct names from "
                                                   "category, scenario, liked, got category,taste"),
    ({"condition_features": ("category", "liked"), "liked_threshold": float("nan")},
     "liked_threshold must be a finite number, got nan"),
    ({"liked_threshold": float("inf")}, "liked_threshold must be a finite number, got inf"),
    ({"buckets": 12}, "buckets must be a power of two >= 1 (1, 2, 4, 8, 16, ...), got 12"),
    ({"buckets": 0}, "buckets must be a power of two >= 1 (1, 2, 4, 8, 16, ...), got 0"),
])
def test_bad_liked_config_is_a_one_line_error_and_changes_nothing(ml100k_warehouse, copy_warehouse, options,
                                                                  message):
    from tests.conftest import tree_snapshot

    wh_path = copy_warehouse(ml100k_warehouse)
    before = tree_snapshot(wh_path)
    ds = Warehouse(wh_path).partitions("events")[-1]
    with pytest.raises(ValueError) as err:
        sequences.run(sequences.Config(**options), ds=ds, warehouse=wh_path)
    assert str(err.value) == message
    assert tree_snapshot(wh_path) == before
