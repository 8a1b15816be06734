"""Spark rows written by Python tasks (``Warehouse.write_arrow_days``): one commit of the files the tasks
report, with the stats they recorded; keys checked in the tasks (``keyed``) or by the Spark key check; any
refusal leaves the table and its directory as they were."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from stages.warehouse.facade import Warehouse
from stages.warehouse.stats import footer_stats
from tests.conftest import tree_snapshot

DAYS = ["2000-12-01", "2000-12-02"]


def events(day: str, users: list[int]) -> list[dict]:
    start = dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC)
    return [{"user_id": u, "item_id": 100 + u, "ts": start + dt.timedelta(hours=u), "scenario": "rating",
             "rating": u / 2, "event_idx": u, "ds": day} for u in users]


def frame(spark, rows: list[dict]):
    schema = "user_id long, item_id long, ts timestamp, scenario string, rating float, event_idx long, ds string"
    return spark.createDataFrame(rows, schema).repartition(3, "user_id")


def log_adds(table_dir: str) -> dict[str, dict]:
    out = {}
    for commit in sorted(Path(table_dir, "_delta_log").glob("*.json")):
        for line in commit.read_text().splitlines():
            action = json.loads(line)
            if "add" in action:
                out[action["add"]["path"]] = action["add"]
            if "remove" in action:
                out.pop(action["remove"]["path"], None)
    return out


def test_tasks_write_one_commit_with_the_stats_they_recorded(spark, warehouse):
    wh = Warehouse(warehouse)
    seen = []

    def halve(batches):  # the task's Python work: rating / 2 (defined here: sent to the workers by value)
        for batch in batches:
            table = pa.Table.from_batches([batch])
            rating = pc.divide(table.column("rating"), 2.0)
            yield table.set_column(table.schema.get_field_index("rating"), "rating", rating).to_batches()[0]

    version = wh.write_arrow_days("events", frame(spark, events(DAYS[0], [1, 2, 3, 4]) + events(DAYS[1], [5, 6])),
                                  halve, days=DAYS, metadata={"lum.note": "x"},
                                  check=lambda files: seen.extend((f.ds, s.stats["numRecords"]) for f, s in files))
    assert version == wh.version("events") and wh.table_metadata("events")["lum.note"] == "x"
    got = wh.read("events").sort_by("user_id")
    assert got.column("rating").to_pylist() == [u / 4 for u in (1, 2, 3, 4, 5, 6)]
    assert got.column("ds").to_pylist() == [DAYS[0]] * 4 + [DAYS[1]] * 2
    assert sorted({d for d, _ in seen}) == DAYS and sum(n for _, n in seen) == 6
    adds = log_adds(wh.table_uri("events"))
    for rel, add in adds.items():  # what the tasks recorded is what the footer says
        path = Path(wh.table_uri("events"), rel)
        assert rel.startswith("arrow-") and f"/ds={add['partitionValues']['ds']}/" in rel
        assert json.loads(add["stats"]) == footer_stats(pq.read_metadata(path), exclude=("ds",))
        assert add["size"] == path.stat().st_size
    on_disk = {str(p.relative_to(wh.table_uri("events"))) for p in Path(wh.table_uri("events")).rglob("*.parquet")}
    assert on_disk == set(adds)


@pytest.mark.parametrize("keyed", [True, False])  # the tasks find it / the Spark key check finds it
def test_duplicated_key_or_failed_check_commits_nothing(spark, warehouse, keyed):
    wh = Warehouse(warehouse)
    wh.write_arrow_days("events", frame(spark, events(DAYS[0], [1, 2])), None, days=[DAYS[0]], keyed=keyed)
    snapshot = tree_snapshot(wh.table_uri("events"))
    doubled = frame(spark, events(DAYS[0], [3, 4, 4]))
    with pytest.raises(ValueError) as info:
        wh.write_arrow_days("events", doubled, None, days=[DAYS[0]], keyed=keyed)
    assert f"table events ds={DAYS[0]}: key (user_id, item_id, ts, scenario) appears 2 times: user_id=4" in str(
        info.value) and str(info.value).endswith("nothing committed")

    def refuse(files):
        raise ValueError("refused by the caller")

    with pytest.raises(ValueError, match="refused by the caller"):
        wh.write_arrow_days("events", frame(spark, events(DAYS[0], [5])), None, days=[DAYS[0]], check=refuse)
    with pytest.raises(ValueError, match="belongs to partition 2000-12-02, not 2000-12-01"):
        wh.write_arrow_days("events", frame(spark, events(DAYS[1], [6])), None, days=[DAYS[0]], keyed=keyed)
    assert tree_snapshot(wh.table_uri("events")) == snapshot  # no commit, no stray folder
    assert sorted(wh.read("events").column("user_id").to_pylist()) == [1, 2]


def test_tallies_are_summed_over_the_files_and_finish_adds_metadata_or_refuses(spark, warehouse):
    wh = Warehouse(warehouse)
    got = []

    def count(table: pa.Table) -> dict[str, int]:  # per written piece: rows with a rating above 1
        return {"high": int(pc.sum(pc.greater(table.column("rating"), 1.0)).as_py() or 0)}

    def finish(sums: dict[str, int]) -> dict[str, str]:
        got.append(sums)
        return {"lum.high": str(sums["high"])}

    rows = frame(spark, events(DAYS[0], [1, 2, 3, 4]) + events(DAYS[1], [5, 6]))  # ratings 0.5 .. 3.0
    version = wh.write_arrow_days("events", rows, None, days=DAYS, tally=count, finish=finish)
    assert got == [{"rows": 6, "high": 4}]  # 1.5, 2.0, 2.5, 3.0 over 3 tasks and 2 days
    assert wh.table_metadata("events")["lum.high"] == "4"
    write = [c for c in wh.history("events", 2) if c.get("operation") != "SET TBLPROPERTIES"][0]
    assert write.get("lum.high") == "4" and wh.version("events") == version  # the data commit carries it too
    snapshot = tree_snapshot(wh.table_uri("events"))

    def refuse(sums: dict[str, int]) -> dict[str, str]:
        raise ValueError(f"refused {sums['rows']} rows")

    with pytest.raises(ValueError, match="refused 1 rows"):
        wh.write_arrow_days("events", frame(spark, events(DAYS[0], [7])), None, days=[DAYS[0]], tally=count,
                            finish=refuse)
    assert tree_snapshot(wh.table_uri("events")) == snapshot  # no commit, no stray folder


def test_dictionary_columns_skip_lists_of_floats_and_times():
    from stages.warehouse.arrow_write import dictionary_columns, file_schema

    assert dictionary_columns(file_schema("user_sequences")) == [
        "user_id", "item_ids.list.element", "conditions.list.element", "history_len", "total_events", "bucket"]
    training = dictionary_columns(file_schema("dlrm_training"))
    assert "user_id" in training and not any(c.startswith(("lum_match", "lum_user", "lum_item")) for c in training)
