"""``lum bench scale``: the process-tree sampler on a known tree, the report of a tiny run, and its errors."""

from __future__ import annotations

import os
import sys

import pytest

from stages.bench.proctree import run_sampled
from stages.bench.scale import QUICK, Config, commands, measure, peak_disk_mb, tree_mb

# A Python child that starts a Python grandchild holding ~200 MiB for a second, then holds ~10 MiB itself.
TREE = ("import subprocess, sys, time\n"
        "c = subprocess.Popen([sys.executable, '-c', 'b = bytearray(200 << 20); import time; time.sleep(1.5)'])\n"
        "c.wait(); x = bytearray(10 << 20); time.sleep(0.5)\n")


def test_sampler_classes_driver_and_python_workers(tmp_path):
    out = run_sampled([sys.executable, "-c", TREE], stdout=str(tmp_path / "o"), stderr=str(tmp_path / "e"),
                      interval=0.05)
    assert out.returncode == 0 and out.seconds >= 1.5 and out.samples >= 10
    assert out.processes["driver"] == 1 and out.processes["workers"] == 1 and out.processes["jvm"] == 0
    assert 190 <= out.peak_rss_mb["workers"] < 400  # the grandchild's 200 MiB, touched by bytearray's zeroing
    assert 5 < out.peak_rss_mb["driver"] < 190 and out.peak_rss_mb["jvm"] == 0


# A process named java holding ~200 MiB that forks itself for a second, as a JVM does to run a shell command.
FORKING_JVM = ("import os, sys, time\n"
               "b = bytearray(200 << 20)\n"
               "pid = os.fork()\n"
               "if pid == 0:\n    time.sleep(1.0); os._exit(0)\n"
               "os.waitpid(pid, 0)\n")


def test_sampler_counts_a_forking_jvm_once(tmp_path):
    """A fork of the JVM shares its pages: summing both would double the JVM (a momentary 8 GiB for a 4 GiB JVM)."""
    java = tmp_path / "java"
    java.symlink_to(os.path.realpath(sys.executable))
    (tmp_path / "jvm.py").write_text(FORKING_JVM)
    driver = f"import subprocess\nsubprocess.run([{str(java)!r}, {str(tmp_path / 'jvm.py')!r}], check=True)\n"
    out = run_sampled([sys.executable, "-c", driver], stdout=str(tmp_path / "o"), stderr=str(tmp_path / "e"),
                      interval=0.05)
    assert out.returncode == 0 and out.samples >= 10
    assert out.processes["jvm"] == 1 and out.processes["workers"] == 0
    assert 190 <= out.peak_rss_mb["jvm"] < 300


def test_sampler_sees_the_disk_a_run_holds_and_gives_back(tmp_path):
    # a child writes 64 MiB (synced, so the file system has allocated it), holds it, then deletes it
    write = (f"import os, time\np = {str(tmp_path / 'big')!r}\n"
             "with open(p, 'wb') as f:\n    f.write(os.urandom(64 << 20)); f.flush(); os.fsync(f.fileno())\n"
             "time.sleep(0.6); os.remove(p)\n")
    out = run_sampled([sys.executable, "-c", write], stdout=str(tmp_path / "o"), stderr=str(tmp_path / "e"),
                      interval=0.05, disk_path=str(tmp_path))
    assert out.returncode == 0 and not (tmp_path / "big").exists()
    assert 60 <= out.peak_disk_mb < 1024  # its 64 MiB at the peak, though nothing is left at the end
    plain = run_sampled([sys.executable, "-c", "pass"], stdout=str(tmp_path / "o"), stderr=str(tmp_path / "e"))
    assert plain.peak_disk_mb is None  # not sampled unless asked


def test_tree_size_and_the_runs_peak_disk(tmp_path):
    for i in range(3):
        (tmp_path / "w" / f"d{i}").mkdir(parents=True)
        (tmp_path / "w" / f"d{i}" / "f").write_bytes(os.urandom(1 << 20))
    assert 3.0 <= tree_mb(tmp_path / "w") < 3.2 and tree_mb(tmp_path / "missing") == 0
    stages = {"ingest": {"peak_disk_mb": 120.0, "warehouse_mb": 100.0},
              "sequences": {"peak_disk_mb": 50.0, "warehouse_mb": 130.0},  # a spill of 20 on top of its output
              "maintain": {"peak_disk_mb": 400.0, "warehouse_mb": 260.0}}  # 130 before + 400 at its peak
    assert peak_disk_mb(stages) == 530.0
    assert peak_disk_mb({"ingest": {"peak_disk_mb": None, "warehouse_mb": 90.0}}) == 90.0


def test_a_failing_stage_is_an_error_naming_it(tmp_path):
    argv = [sys.executable, "-c", "import sys; print('lum: error: no partition', file=sys.stderr); sys.exit(2)"]
    with pytest.raises(ValueError, match=r"join@2000-01-02 exited 2: lum: error: no partition"):
        measure("join@2000-01-02", argv, tmp_path, Config(interval=0.05))


def test_commands_run_each_daily_stage_per_day_after_the_first():
    labels = [label for label, _ in commands(Config(days=3, run_days=2), "/w")]
    assert labels == ["ingest"] + [f"{s}@{d}" for d in ("2000-01-02", "2000-01-03")
                                   for s in ("sequences", "pretrain", "infer", "join", "maintain")]
    with pytest.raises(ValueError, match="run_days"):
        Config(days=2, run_days=2).check()


@pytest.mark.slow  # five stage processes (two start a Spark JVM): about a minute on an idle 2-core box
def test_bench_scale_quick_report(tmp_path):
    from stages.pipeline.registry import run_with

    root = tmp_path / "bench"
    report = run_with("bench.scale", {"dir": str(root)}, quick=True, warehouse=str(tmp_path / "unused"))
    day = "2000-01-02"
    assert report["users"] == QUICK["users"]
    daily = ("sequences", "pretrain", "infer", "join", "maintain")
    assert list(report["stages"]) == ["ingest"] + [f"{s}@{day}" for s in daily]
    for label, entry in report["stages"].items():
        rss = entry["peak_rss_mb"]
        assert set(rss) == {"driver", "workers", "jvm"}
        assert 0 < entry["seconds"] < 600, label
        assert 50 < rss["driver"] < 4000, label  # a Python with pyarrow loaded, far from the machine's memory
        spark = label.startswith(("sequences", "join"))
        assert (rss["jvm"] > 100) == spark, label  # the Spark JVM, only under the Spark stages
        assert entry["rows"] > 0, label
        assert entry["warehouse_mb"] > 0 and entry["peak_disk_mb"] >= 0, label
    stages = report["stages"]
    assert stages["sequences@" + day]["rows"] <= QUICK["users"] < stages["ingest"]["rows"]
    assert stages["join@" + day]["peak_rss_mb"]["workers"] > 0  # mapInArrow's Python workers
    assert stages["infer@" + day]["rows"] <= 2 * stages["sequences@" + day]["rows"]  # conditions top:2
    assert [r["stage"] for r in report["table"]] == list(stages)
    assert stages["join@" + day]["warehouse_mb"] > stages["infer@" + day]["warehouse_mb"]  # + dlrm_training
    assert report["summary"]["peak_disk_mb"] >= max(e["warehouse_mb"] for e in stages.values())
    assert not os.path.exists(root) and not os.path.exists(tmp_path / "unused")


def test_cli_users_flag_reaches_the_bench_config(tmp_path, capsys):
    from stages.cli.app import main

    assert main(["bench", "scale", "--users", "0", "--warehouse", str(tmp_path / "w"),
                 "--out", str(tmp_path / "r.json")]) == 2
    assert "bench scale: users must be >= 1, got 0" in capsys.readouterr().err
