"""lum query --as-of / query_user_knowledge(as_of=...): a partition written twice, read as of each version
and as of a time between the commits; the errors at the edges of the history (before the first commit,
beyond the latest version, a version vacuum emptied, commits the log no longer holds)."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest
from deltalake import DeltaTable

from stages.cli.app import main
from stages.query.lookup import query_table, query_user_knowledge
from stages.warehouse.facade import Warehouse
from stages.warehouse.history import commit_time, parse_as_of
from tests.stages.query.test_query import knowledge

DAY = "2000-01-01"


@pytest.fixture
def twice(warehouse) -> tuple[str, list[int]]:
    """Partition DAY written twice (versions 0 and 1, embedding[1] 0.0 then 5.0); the commit timestamps (ms)."""
    wh = Warehouse(warehouse)
    wh.write_partition("user_knowledge", knowledge(DAY, [1, 2], version="lum-a"), ds=DAY)
    time.sleep(0.02)  # the two commits get different millisecond timestamps
    wh.write_partition("user_knowledge", knowledge(DAY, [1, 2], version="lum-b", shift=5.0), ds=DAY)
    stamps = {h["version"]: h["timestamp"] for h in wh.history("user_knowledge")}
    assert stamps[0] < stamps[1]
    return warehouse, [stamps[0], stamps[1]]


def shifts(table) -> set[float]:
    return {e[1] for e in table.column("embedding").to_pylist()}


def test_as_of_versions_and_a_time_between_the_commits(twice):
    path, (t0, t1) = twice
    assert shifts(query_user_knowledge(path, user_ids=[1], ds=DAY, as_of=0)) == {0.0}
    assert shifts(query_user_knowledge(path, user_ids=[1], ds=DAY, as_of=1)) == {5.0}
    assert shifts(query_user_knowledge(path, user_ids=[1], ds=DAY)) == {5.0}
    between = commit_time(t1 - 1)  # after version 0, before version 1: "...Z"
    out = query_user_knowledge(path, user_ids=[1], ds=DAY, as_of=between)
    assert shifts(out) == {0.0} and out.schema.metadata[b"lum.version"] == b"0"
    at_second = dt.datetime.fromtimestamp(t1 / 1000, dt.UTC)  # at the commit itself: that version
    assert shifts(query_user_knowledge(path, user_ids=[1], ds=DAY, as_of=at_second)) == {5.0}
    naive = at_second.replace(tzinfo=None)  # naive means UTC
    assert shifts(query_user_knowledge(path, user_ids=[1], ds=DAY, as_of=naive)) == {5.0}
    assert query_user_knowledge(path, user_ids=[1], ds=DAY, as_of="2999-01-01T00:00:00+02:00"
                                ).schema.metadata[b"lum.version"] == b"1"
    assert shifts(query_table(path, "user_knowledge", user_ids=[2], ds=DAY, version=0)) == {0.0}  # the old name


@pytest.mark.parametrize("as_of, match", [
    ("1999-01-01T00:00:00Z", "is before its first commit \\(version 0 at "),
    (7, "version must be 0..1, got 7"),
    ("7", "version must be 0..1, got 7"),
    ("2000-01-01", "as_of must be a table version"),
    ("yesterday", "as_of must be a table version"),
    (True, "as_of must be a table version"),
    (-1, "as_of version must be >= 0"),
])
def test_as_of_out_of_range_or_malformed(twice, as_of, match):
    path, _ = twice
    with pytest.raises(ValueError, match=match):
        query_user_knowledge(path, user_ids=[1], ds=DAY, as_of=as_of)


def test_as_of_and_a_different_version_conflict(twice):
    path, _ = twice
    with pytest.raises(ValueError, match="not both"):
        query_user_knowledge(path, user_ids=[1], ds=DAY, as_of=0, version=1)


def test_parse_as_of():
    assert parse_as_of("12") == 12
    assert parse_as_of("2026-11-26T10:00:00Z") == dt.datetime(2026, 11, 26, 10, tzinfo=dt.UTC)
    assert parse_as_of("2026-11-26 12:00:00+02:00") == dt.datetime(2026, 11, 26, 10, tzinfo=dt.UTC)


def test_cli_as_of_timestamp_version_alias_and_errors(twice, capsys):
    path, (t0, t1) = twice
    assert main(["query", "--warehouse", path, "--user-id", "1", "--ds", DAY, "--as-of", commit_time(t1 - 1),
                 "--format", "json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert {json.loads(x)["model_version"] for x in lines[:-1]} == {"lum-a"}
    summary = json.loads(lines[-1])
    assert summary["version"] == 0 and summary["as_of"] == commit_time(t1 - 1) and summary["rows"] == 3
    assert main(["query", "--warehouse", path, "--user-id", "1", "--version", "1"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["version"] == 1
    for bad, match in (("1999-01-01T00:00:00Z", "before its first commit"), ("5", "version must be 0..1")):
        assert main(["query", "--warehouse", path, "--user-id", "1", "--as-of", bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("lum: error: ") and match in err[0]


def test_version_emptied_by_vacuum_names_table_version_and_retention(twice, monkeypatch):
    path, _ = twice
    wh = Warehouse(path)
    monkeypatch.setenv("LUM_VACUUM_RETENTION_HOURS", "0")
    removed = wh.vacuum("user_knowledge")  # the setting: version 0's files go now
    assert removed
    with pytest.raises(ValueError, match="table user_knowledge version 0: 1 data file\\(s\\) are gone .*"
                                         "LUM_VACUUM_RETENTION_HOURS = 0; last vacuum at .* kept 0 h"):
        query_user_knowledge(path, user_ids=[1], ds=DAY, as_of=0)
    assert shifts(query_user_knowledge(path, user_ids=[1], ds=DAY, as_of=1)) == {5.0}


def test_vacuum_retention_setting(warehouse, monkeypatch):
    from stages.core.settings import vacuum_retention_hours

    monkeypatch.delenv("LUM_VACUUM_RETENTION_HOURS", raising=False)
    assert vacuum_retention_hours() == 168
    monkeypatch.setenv("LUM_VACUUM_RETENTION_HOURS", "24")
    assert vacuum_retention_hours() == 24
    monkeypatch.setenv("LUM_VACUUM_RETENTION_HOURS", "a week")
    with pytest.raises(ValueError, match="LUM_VACUUM_RETENTION_HOURS must be an integer >= 0, got 'a week'"):
        vacuum_retention_hours()


def test_commits_gone_from_the_log_name_the_log_retention(twice):
    path, (t0, t1) = twice
    wh = Warehouse(path)
    wh.set_table_metadata("user_knowledge", {"delta.logRetentionDuration": "interval 0 seconds"})  # version 2
    time.sleep(0.02)
    table = DeltaTable(wh.table_uri("user_knowledge"))
    table.create_checkpoint()
    table.cleanup_metadata()  # versions before the checkpoint leave the log
    with pytest.raises(ValueError, match="version 0 can no longer be loaded .*delta.logRetentionDuration = "
                                         "interval 0 seconds"):
        query_user_knowledge(path, user_ids=[1], ds=DAY, as_of=0)
    with pytest.raises(ValueError, match="before the oldest commit its log still holds \\(version 2 at .*"
                                         "delta.logRetentionDuration = interval 0 seconds"):
        query_user_knowledge(path, user_ids=[1], ds=DAY, as_of=commit_time(t1))
    assert shifts(query_user_knowledge(path, user_ids=[1], ds=DAY, as_of=2)) == {5.0}
