"""lum bench chaos: kill points, the trial plan, the comparison (it must see a changed value, a lost row and a
duplicated key), and (slow) two killed-and-resumed backfills that must end equal to the clean one."""

from __future__ import annotations

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from stages.bench import chaos
from stages.bench.chaos_compare import compare, duplicate_keys
from stages.bench.chaos_proc import ChildResult, KillPoint, Marker
from stages.pipeline import registry
from stages.warehouse.facade import Warehouse
from tests.stages.pretrain_fixtures import make_warehouse


def test_kill_points_parse_and_refuse():
    assert KillPoint.parse("delta_commit:2:0.01") == KillPoint("delta_commit", 2, 0.01)
    assert KillPoint.parse("any") == KillPoint("any", 1, 0.0)
    for bad in ("commit:1", "checkpoint:0", "checkpoint:x", "checkpoint:1:-1", "a:1:2:3"):
        with pytest.raises(ValueError, match="kill point"):
            KillPoint.parse(bad)


def test_config_is_checked():
    with pytest.raises(ValueError, match="stages must be a subset"):
        chaos.Config(stages=("train",)).check()
    with pytest.raises(ValueError, match="bootstrap 1998-03-02 must be before start"):
        chaos.Config(bootstrap="1998-03-02").check()
    assert registry.build_config("bench.chaos", quick=True).trials == chaos.QUICK["trials"]


def test_plan_aims_at_each_phase_in_turn_within_its_reference_duration():
    ref = ChildResult(rc=0, seconds=10.0, markers=[
        Marker(1.0, "begin", "delta_commit", "a"), Marker(1.2, "end", "delta_commit", "a"),
        Marker(2.0, "begin", "delta_commit", "b"), Marker(2.1, "end", "delta_commit", "b"),
        Marker(3.0, "begin", "checkpoint", "c"), Marker(3.01, "end", "checkpoint", "c")])
    cfg = chaos.Config(trials=6, seed=3)
    points = chaos.plan(cfg, ref)
    assert [p.phase for p, _ in points] == ["any", "delta_commit", "checkpoint"] * 2
    for point, aim in points:
        if point.phase == "delta_commit":
            assert aim in ("a", "b") and point.delay_s <= (0.2 if aim == "a" else 0.1) + 1e-9
        elif point.phase == "checkpoint":
            assert point.delay_s == 0.0  # 10 ms: shorter than SHORT_PHASE_S, hit at its begin
        elif point.phase == "any":
            assert 0 <= point.delay_s <= 10.0
    assert chaos.plan(cfg, ref) == points  # seeded
    assert [p.label() for p, _ in chaos.plan(chaos.Config(kill_at=("checkpoint:2",)), ref)] == ["checkpoint:2:0.000"]


def test_compare_sees_changed_lost_and_duplicated_rows(tmp_path):
    ref, got = str(tmp_path / "ref"), str(tmp_path / "got")
    make_warehouse(ref, days=2)
    make_warehouse(got, days=2)
    assert compare(ref, got, atol=0)["ok"]
    wh = Warehouse(got)
    seqs = wh.read("user_sequences", ds="2000-01-02")
    ratings = pa.array([[r + 1e-3 for r in row] for row in seqs.column("ratings").to_pylist()],
                       seqs.schema.field("ratings").type)
    wh.write_partition("user_sequences", seqs.set_column(seqs.schema.get_field_index("ratings"), "ratings", ratings),
                       ds="2000-01-02")
    changed = compare(ref, got, atol=1e-6)
    assert changed["differs"] == ["user_sequences"] and changed["max_abs_diff"] == pytest.approx(1e-3, rel=1e-2)
    assert compare(ref, got, atol=1e-2)["ok"]  # within tolerance
    wh.write_partition("user_sequences", seqs.slice(1), ds="2000-01-02")
    assert "rows" in compare(ref, got, atol=0)["tables"]["user_sequences"]["problem"]
    for _ in range(2):  # row 0 back, then once more: a partition committed twice looks like this
        write_deltalake(wh.table_uri("user_sequences"), seqs.slice(0, 1), mode="append", partition_by=["ds"])
    assert duplicate_keys(wh.read("user_sequences"), ["ds", "user_id"]) == 1
    assert "1 duplicate key rows" in compare(ref, got, atol=0)["tables"]["user_sequences"]["problem"]


@pytest.mark.slow
def test_killed_backfills_resume_to_the_clean_tables(tmp_path):
    """Pretrain + infer over two days (no Spark, to stay fast): one kill as the 3rd checkpoint write begins
    (resume from the step-4 checkpoint), one at the second Delta commit (item_knowledge committed,
    user_knowledge not). Both resumed runs must equal the clean run in every table and model version."""
    base = str(tmp_path / "base")
    days = make_warehouse(base, days=2)
    cfg = chaos.Config(base=base, bootstrap=None, start=days[0], days=2, stages=("pretrain", "infer"),
                       kill_at=("checkpoint:3:0", "delta_commit:2:0"), atol=0.0, dir=str(tmp_path / "work"))
    report = chaos.run(cfg)
    assert [t["hit"] for t in report["trials"]] == ["checkpoint", "delta_commit"], report["trials"]
    assert [t["killed"] for t in report["trials"]] == [True, True]
    problems = {t["trial"]: t["problems"] for t in report["trials"] if not t["match"]}
    assert not problems, problems
    assert report["summary"]["matched"] == 2 and report["summary"]["survivors"] == 0
    assert report["trials"][1]["hit_detail"] == f"user_knowledge ds={days[0]}"


@pytest.mark.slow
def test_a_killed_maintain_sort_resumes_to_the_clean_tables(tmp_path):
    """Kills inside maintain's sort of user_knowledge (the range sort, before its one commit) on each of two days:
    the resumed backfill must leave every table as the clean run does, and the killed sorts' spill folders gone."""
    base = str(tmp_path / "base")
    days = make_warehouse(base, days=2)
    config = tmp_path / "tiny.toml"  # 24 users in files of 6: four files a day, which maintain sorts
    config.write_text(chaos.TINY_TOML.replace("chunk_users = 256", "chunk_users = 6"))
    cfg = chaos.Config(base=base, bootstrap=None, start=days[0], days=2, stages=("pretrain", "infer", "maintain"),
                       kill_at=("cluster_sort:1:0", "cluster_sort:2:0"), atol=0.0, dir=str(tmp_path / "work"),
                       keep=True, config=str(config))
    report = chaos.run(cfg)
    assert [t["hit"] for t in report["trials"]] == ["cluster_sort", "cluster_sort"], report["trials"]
    assert [t["hit_detail"] for t in report["trials"]] == [f"user_knowledge ds={d}" for d in days]
    problems = {t["trial"]: t["problems"] for t in report["trials"] if not t["match"]}
    assert not problems, problems
    assert report["summary"]["matched"] == 2 and report["summary"]["survivors"] == 0
    spills = list((tmp_path / "work").rglob("lum-cluster-*"))
    assert not [p for p in spills if p.is_dir()], spills
