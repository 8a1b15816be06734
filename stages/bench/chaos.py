"""``lum bench chaos``: SIGKILL a ``lum backfill`` at seeded moments, resume it, and prove no row is lost or doubled.

In a throw-away directory (``dir``; deleted unless ``keep`` or a trial differs): ingest ``dataset`` (or copy
``base``), run the ``bootstrap`` day cleanly, then the backfill of ``days`` days from ``start`` (``stages``, the
built-in tiny settings or ``config``) once cleanly as the reference. Each trial copies the bootstrapped
warehouse, starts the same backfill as a child (``stages.bench.chaos_proc``), SIGKILLs its process group at a
kill point, kills anything of its session that survived, reruns the same command to completion and compares
every table and model version with the reference (``stages.bench.chaos_compare``). Kill points: ``kill_at``
(fixed, one per trial) or, per trial, the next phase of ``phases`` in turn (default: ``any`` plus every phase
the reference run shows), a seeded occurrence of it and a seeded delay within that occurrence's duration in the
reference (0 for occurrences shorter than ``SHORT_PHASE_S``: a timer cannot land inside those; ``any``: a
seeded moment of the whole run). The phase a kill hit is read from the child's markers.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stages.bench.chaos_compare import compare, stray_files
from stages.bench.chaos_proc import ANY, ChildResult, KillPoint, run_child
from stages.core import phases
from stages.core.config import to_dict
from stages.core.dates import check_ds, days_before

log = logging.getLogger(__name__)

QUICK = {"trials": 3, "days": 2}
DAILY_STAGES = ("sequences", "pretrain", "infer", "join", "maintain")
SHORT_PHASE_S = 0.02  # shorter occurrences are hit at their begin (a timer thread waits for the GIL)
DEFAULT_PHASES = ("spark_write", "staging", "delta_commit", "checkpoint", "model_publish", "infer_publish",
                  "cluster_sort")
# tests/dags/tiny.toml with more, checkpointed steps, so kills land in training and in checkpoint writes
TINY_TOML = """[sequences]
max_len = 32

[pretrain]
max_len = 30
d_model = 16
n_heads = 2
n_layers = 1
d_ff = 32
d_item = 16
d_feature = 8
max_steps = 8
checkpoint_every = 2
row_tokens = 64
rows_per_step = 4
sampled_negatives = 32
warmup_steps = 1
threads = 1

[infer]
conditions = "top:3"
chunk_users = 256
file_mb = 0  # a file per chunk: several files a day, so maintain sorts the day (a phase to kill in)
"""


@dataclass(frozen=True)
class Config:
    """Options of ``lum bench chaos`` (``--set key=value``)."""

    trials: int = 20  # killed-and-resumed runs (ignored when kill_at is given: one trial per kill point)
    seed: int = 0  # seeds the kill points
    dataset: str = "movielens-100k"  # `lum ingest` source of the base warehouse
    base: str | None = None  # copy this warehouse instead of ingesting (it must hold what the stages read)
    bootstrap: str | None = "1998-03-01"  # day run cleanly before the reference (warm start); None: none
    start: str = "1998-03-02"  # first day of the killed backfill
    days: int = 3  # days of the killed backfill
    stages: tuple[str, ...] = DAILY_STAGES  # the backfill's --stages
    config: str | None = None  # stage config file; None: the built-in tiny settings (TINY_TOML)
    phases: tuple[str, ...] = ()  # phases to aim at in turn; () = "any" + every phase of DEFAULT_PHASES seen
    kill_at: tuple[str, ...] = ()  # fixed kill points "phase[:occurrence[:delay_s]]", one trial each
    atol: float = 1e-6  # float tolerance of tables, weights and optimizer state (the report has the max diff)
    timeout_s: float = 1800.0  # per child process
    dir: str | None = None  # work directory; None: a new temp dir
    keep: bool = False  # keep every warehouse (mismatching trials are always kept)

    def check(self) -> None:
        if self.trials < 1 and not self.kill_at:
            raise ValueError(f"trials must be >= 1, got {self.trials}")
        if self.days < 1:
            raise ValueError(f"days must be >= 1, got {self.days}")
        bad = [s for s in self.stages if s not in DAILY_STAGES]
        if bad or not self.stages:
            raise ValueError(f"stages must be a subset of {', '.join(DAILY_STAGES)}, got {','.join(self.stages)}")
        unknown = [p for p in self.phases if p not in (*phases.PHASES, ANY)]
        if unknown:
            raise ValueError(f"unknown phase {unknown[0]!r}; known: {', '.join((*phases.PHASES, ANY))}")
        for point in self.kill_at:
            KillPoint.parse(point)
        check_ds(self.start, name="start")
        if self.bootstrap is not None and check_ds(self.bootstrap, name="bootstrap") >= self.start:
            raise ValueError(f"bootstrap {self.bootstrap} must be before start {self.start}")


def _backfill_args(cfg: Config, wh: Path, start: str, end: str, config_path: str) -> list[str]:
    return ["backfill", "--warehouse", str(wh), "--start", start, "--end", end, "--stages", *cfg.stages,
            "--config", config_path]


def _must_succeed(result: ChildResult, what: str, log_path: Path) -> None:
    if result.rc != 0:
        raise ValueError(f"{what} failed (exit {result.rc}); see {log_path}: "
                         f"{result.tail.strip().splitlines()[-1] if result.tail.strip() else ''}")


def plan(cfg: Config, reference: ChildResult) -> list[tuple[KillPoint, str]]:
    """The kill point of every trial and the detail of the occurrence it aims at in the reference run."""
    if cfg.kill_at:
        return [(KillPoint.parse(p), "fixed") for p in cfg.kill_at]
    seen = [p for p in DEFAULT_PHASES if reference.occurrences(p)]
    targets = list(cfg.phases) or [ANY, *seen]
    rng = np.random.default_rng(cfg.seed)
    out = []
    for i in range(cfg.trials):
        name = targets[i % len(targets)]
        if name == ANY:
            out.append((KillPoint(ANY, 1, round(float(rng.uniform(0, reference.seconds)), 3)), "run"))
            continue
        occ = reference.occurrences(name)
        if not occ:
            raise ValueError(f"phase {name} never occurs in the reference run; choose from {', '.join(seen)}")
        k = int(rng.integers(len(occ)))
        begin, end = occ[k]
        details = [m.detail for m in reference.markers if m.kind == "begin" and m.phase == name]
        delay = float(rng.uniform(0, end - begin)) if end - begin >= SHORT_PHASE_S else 0.0
        out.append((KillPoint(name, k + 1, round(delay, 4)), details[k]))
    return out


def _trial(cfg: Config, n: int, point: KillPoint, aim: str, work: Path, base: Path, reference: Path,
           args_of) -> dict[str, Any]:
    wh = work / f"trial-{n:03d}"
    shutil.copytree(base, wh)
    killed = run_child(args_of(wh), log_path=work / f"trial-{n:03d}-killed.log", kill=point, timeout_s=cfg.timeout_s)
    hit = killed.open_phases()
    stage = next((d for p, d in reversed(hit) if p == "stage"), None)
    was_killed = killed.rc is not None and killed.rc < 0 and not killed.timed_out
    resume_log = work / f"trial-{n:03d}-resume.log"
    resumed = run_child(args_of(wh), log_path=resume_log, timeout_s=cfg.timeout_s)
    record: dict[str, Any] = {
        "trial": n, "target": point.label(), "aimed_at": aim, "killed": was_killed, "kill_s": killed.killed_at,
        "hit": (hit[-1][0] if hit else "between_phases") if was_killed else "finished",
        "hit_detail": hit[-1][1] if was_killed and hit else None, "stage": stage,
        "killed_rc": killed.rc, "survivors": killed.survivors + resumed.survivors,
        "resume_rc": resumed.rc, "resume_s": resumed.seconds,
    }
    if resumed.rc != 0:
        record.update(match=False, differs=["resume failed"],
                      problems={"resume": resumed.tail.strip().splitlines()[-1] if resumed.tail.strip() else ""})
    else:
        result = compare(str(reference), str(wh), atol=cfg.atol)
        record.update(match=result["ok"], differs=result["differs"], max_abs_diff=result["max_abs_diff"],
                      problems={k: r["problem"] for k, r in {**result["tables"], **result["models"]}.items()
                                if r["problem"]},
                      stray_files=stray_files(str(wh)))
    if record["match"] and not cfg.keep:
        shutil.rmtree(wh, ignore_errors=True)
    else:
        record["warehouse"] = str(wh)
    log.info("chaos trial %d: target %s, hit %s (%s) at %s s, resume rc %s, match %s %s", n, point.label(),
             record["hit"], record["hit_detail"], record["kill_s"], resumed.rc, record["match"], record["differs"])
    return record


def run(cfg: Config, *, warehouse: Any = None) -> dict[str, Any]:
    """Run the trials; returns {"config", "reference", "trials": [...], "per_phase", "table", "summary"}.

    ``warehouse`` is not touched: everything happens under ``dir``."""
    cfg.check()
    started = time.perf_counter()
    work = Path(cfg.dir or tempfile.mkdtemp(prefix="lum-chaos-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    config_path = cfg.config
    if config_path is None:
        config_path = str(work / "tiny.toml")
        Path(config_path).write_text(TINY_TOML)
    end = days_before(cfg.start, -(cfg.days - 1))  # the last day
    base = work / "base"
    if base.exists():
        shutil.rmtree(base)
    if cfg.base:
        shutil.copytree(cfg.base, base)
    else:
        ingest = run_child(["ingest", cfg.dataset, "--warehouse", str(base)], log_path=work / "ingest.log")
        _must_succeed(ingest, f"lum ingest {cfg.dataset}", work / "ingest.log")
    boot_s = None
    if cfg.bootstrap:
        boot = run_child(_backfill_args(cfg, base, cfg.bootstrap, cfg.bootstrap, config_path),
                         log_path=work / "bootstrap.log", timeout_s=cfg.timeout_s)
        _must_succeed(boot, f"the bootstrap backfill of {cfg.bootstrap}", work / "bootstrap.log")
        boot_s = boot.seconds

    def args_of(wh: Path) -> list[str]:
        return _backfill_args(cfg, wh, cfg.start, end, config_path)

    reference = work / "reference"
    shutil.copytree(base, reference)
    ref = run_child(args_of(reference), log_path=work / "reference.log", timeout_s=cfg.timeout_s)
    _must_succeed(ref, "the reference backfill", work / "reference.log")
    trials = [_trial(cfg, n, point, aim, work, base, reference, args_of)
              for n, (point, aim) in enumerate(plan(cfg, ref), 1)]

    per_phase: dict[str, dict[str, int]] = {}
    for t in trials:
        entry = per_phase.setdefault(t["hit"], {"trials": 0, "matched": 0})
        entry["trials"] += 1
        entry["matched"] += int(t["match"])
    matched = sum(t["match"] for t in trials)
    summary = {"trials": len(trials), "killed": sum(t["killed"] for t in trials), "matched": matched,
               "mismatched": len(trials) - matched, "survivors": sum(t["survivors"] for t in trials),
               "max_abs_diff": max([t.get("max_abs_diff", 0.0) for t in trials] or [0.0]),
               "seconds": round(time.perf_counter() - started, 1)}
    if matched == len(trials) and not cfg.keep:
        shutil.rmtree(work, ignore_errors=True)
    table = [{"trial": t["trial"], "target": t["target"], "hit": t["hit"], "stage": t["stage"] or "-",
              "kill s": t["kill_s"], "match": t["match"], "differs": ",".join(t["differs"]) or "-"} for t in trials]
    return {
        "config": to_dict(cfg), "dir": str(work),
        "command": "python -m stages " + " ".join(args_of(Path("<warehouse>"))),
        "bootstrap_seconds": boot_s,
        "reference": {"seconds": ref.seconds, "phases": dict(Counter(m.phase for m in ref.markers
                                                                     if m.kind == "begin"))},
        "trials": trials, "per_phase": per_phase, "table": table, "summary": summary,
    }
