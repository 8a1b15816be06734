"""``lum demo``: the main job on embedded defaults, one command from a fresh clone (the README describes the run).

The run window is ``days`` consecutive days ending where ``WINDOW_QUANTILE`` of all events have happened (busy
days, so every day has samples of both labels). Day D0-1 is bootstrapped (sequences, a LUM trained from scratch
with leave-last-out evaluation, infer) so that D0's join has knowledge; then the real DAG ``lum_daily`` runs
each day through ``dag.test`` (in-process; a private SQLite metadata DB under ``out_dir/airflow`` unless
AIRFLOW_HOME is set), ``lum evaluate`` trains on every day but the last and tests on it, and ``out_dir`` gets
``index.html`` and ``demo.json``. A warehouse that already holds events is reused (no ingest). Prints progress
lines, as the user-facing command; logs go to stderr.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from stages.core.dates import day_range, prev_day
from stages.model import store as model_store
from stages.pipeline import daily, registry
from stages.pipeline.report import write_report
from stages.query.lookup import query_user_knowledge
from stages.warehouse.facade import Warehouse

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]  # the repository root, which holds dags/
WINDOW_QUANTILE = 0.8  # the run window ends where this share of all events has happened
# Embedded stage options: small enough for the demo's time budget on a small CPU machine (ML-1M); tiny for quick.
FULL_OPTIONS = {
    # a few passes: about half of the budget; the rest is the daily DAG runs
    "pretrain.epochs": 3.0, "pretrain.eval_max_users": 1000, "pretrain.threads": 2,
    # every genre: the target item's own genre always has a condition, so lum_user is rarely null
    "infer.conditions": "all",
}
QUICK_OPTIONS = {
    "sequences.max_len": 64,
    "pretrain.max_len": 60, "pretrain.row_tokens": 128, "pretrain.rows_per_step": 8, "pretrain.d_model": 32,
    "pretrain.d_ff": 64, "pretrain.d_item": 32, "pretrain.n_layers": 1, "pretrain.epochs": 1.0,
    "pretrain.sampled_negatives": 128, "pretrain.eval_max_users": 200, "pretrain.threads": 1,
    "infer.conditions": "top:3",
}


def _airflow_setup(out_dir: str) -> None:
    """Point Airflow at a private home and the repo's dags/ (unless configured), then create its DB."""
    if "airflow" not in sys.modules:
        home = os.environ.setdefault("AIRFLOW_HOME", os.path.abspath(os.path.join(out_dir, "airflow")))
        os.makedirs(home, exist_ok=True)
        os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
        os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
        os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{home}/airflow.db")
    from airflow.utils import db  # deferred: Airflow reads its settings at import; they are set just above

    db.initdb()


def choose_window(warehouse: str, days: int) -> list[str]:
    """``days`` consecutive days ending where WINDOW_QUANTILE of the events have happened."""
    counts = pc.value_counts(Warehouse.of(warehouse).read("dlrm_samples", columns=["ds"]).column("ds"))
    order = np.argsort(counts.field("values").to_numpy(zero_copy_only=False))
    day_list = counts.field("values").to_numpy(zero_copy_only=False)[order]
    cum = np.cumsum(counts.field("counts").to_numpy()[order])
    end = str(day_list[int(np.searchsorted(cum, WINDOW_QUANTILE * cum[-1]))])
    start = (dt.date.fromisoformat(end) - dt.timedelta(days=days - 1)).isoformat()
    return day_range(start, end)


def _meta(warehouse: str, ds: str) -> dict[str, Any]:
    path = model_store.store_root(warehouse) / model_store.version_name(ds) / "meta.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _dag_run(dag: Any, ds: str) -> dict[str, Any]:
    """One dag.test run processing day ``ds``; returns per-task wall seconds and states."""
    logical = dt.datetime.fromisoformat(ds).replace(tzinfo=dt.UTC) + dt.timedelta(days=1)
    run = dag.test(logical_date=logical)  # the data interval is the day before logical_date: ds
    tis = {ti.task_id: ti for ti in run.get_task_instances()}
    failed = [t for t, ti in tis.items() if ti.state != "success"]
    if run.state != "success" or failed:
        raise RuntimeError(f"lum_daily run for {ds} ended {run.state}; failed tasks: {', '.join(failed)}")
    return {"ds": ds, **{t: round(float(ti.duration or 0.0), 2) for t, ti in tis.items()}}


@dataclass(frozen=True)
class Config:
    out_dir: str = "reports/demo"  # the HTML report, its plots and demo.json
    days: int = 7                  # daily DAG runs; >= 3 (train on >= 2 days, test on the last)
    quick: bool = False            # ML-100K and tiny sizes: a smoke run of every step in a few minutes


def run(cfg: Config, *, warehouse: Warehouse | str | None) -> dict[str, Any]:
    """The whole demo (see module doc); returns the summary, also written to ``out_dir/demo.json``."""
    wh = Warehouse.of(warehouse)
    warehouse, out_dir, days, quick = wh.uri, cfg.out_dir, cfg.days, cfg.quick
    if days < 3:
        raise ValueError(f"days must be >= 3 (train on >= 2 days, test on the last), got {days}")
    started = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    overrides = QUICK_OPTIONS if quick else FULL_OPTIONS
    source = "movielens-100k" if quick else "movielens-1m"
    ingest = {"skipped": True} if wh.exists("events") else registry.ingest(source, warehouse=wh)
    print(f"demo: ingest {source}: {json.dumps(ingest, default=str)[:200]}", flush=True)

    window = choose_window(warehouse, days)
    boot = prev_day(window[0])
    print(f"demo: bootstrap {boot}, daily DAG runs {window[0]} .. {window[-1]}", flush=True)
    boot_times: dict[str, Any] = {"ds": boot}
    loss_points: list = []
    for stage in ("sequences", "pretrain", "infer"):
        extra = {"pretrain.retrain": True, "pretrain.eval": True} if stage == "pretrain" else {}
        result = daily.run_stage(stage, boot, warehouse, None, {**overrides, **extra})
        boot_times[stage] = result["seconds"]
        if stage == "pretrain":
            loss_points = result.get("loss_curve") or []
    timings = [boot_times]
    boot_meta = _meta(warehouse, boot)
    retrieval = {k: v for k, v in (boot_meta.get("metrics", {}).get("test") or {}).items() if "@" in k}
    print(f"demo: model lum-{boot}: HR@10 {retrieval.get('hr@10')}, NDCG@10 {retrieval.get('ndcg@10')}, "
          f"HR@10 under the target's category {retrieval.get('target_cond_hr@10')}", flush=True)

    config_path = os.path.join(out_dir, "demo_config.json")
    per_stage = daily.split_overrides(overrides)
    with open(config_path, "w") as fh:
        json.dump(per_stage, fh, indent=1)
    _airflow_setup(out_dir)
    from airflow.dag_processing.dagbag import DagBag  # deferred: after _airflow_setup chose AIRFLOW_HOME

    bag = DagBag(dag_folder=str(REPO / "dags"))
    if bag.import_errors:
        raise RuntimeError(f"dags/ import errors: {bag.import_errors}")
    dag = bag.dags["lum_daily"]
    saved = {k: os.environ.get(k) for k in ("LUM_WAREHOUSE", "LUM_CONFIG")}
    os.environ.update(LUM_WAREHOUSE=warehouse, LUM_CONFIG=config_path)
    try:
        for ds in window:
            timings.append(_dag_run(dag, ds))
            print(f"demo: lum_daily {ds}: " + ", ".join(f"{k} {v}s" for k, v in timings[-1].items() if k != "ds"),
                  flush=True)
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)

    sample_user = int(wh.read("user_knowledge", ds=window[-1], columns=["user_id"]).column("user_id")[0].as_py())
    rows = query_user_knowledge(warehouse, user_ids=[sample_user], ds=window[-1]).to_pylist()
    print(f"demo: lum query --ds {window[-1]} --user-id {sample_user}: {len(rows)} rows, first "
          f"{rows[0]['condition']} {[round(v, 3) for v in rows[0]['embedding'][:4]]} ...", flush=True)
    lifts = []
    for consumer in ("dlrm", "lr"):  # a large and a small consumer of the same LUM columns
        result = registry.run_with("evaluate", {
            "train_start": window[0], "train_end": window[-2], "test_end": window[-1], "consumer": consumer,
            "out_dir": os.path.join(out_dir, f"evaluate_{consumer}")}, warehouse=wh)
        lifts.append({k: result[k] for k in ("consumer", "auc_without_lum", "auc_with_lum", "lift",
                                             "lift_with_knowledge", "test_with_knowledge")})
        print(f"demo: {consumer} AUC without LUM {result['auc_without_lum']:.4f}, with LUM "
              f"{result['auc_with_lum']:.4f}, lift {result['lift']:+.4f}", flush=True)
    auc = lifts[0]
    # the knowledge of the bootstrap day against popularity, on the first item each user takes after it
    knowledge = registry.run_with("evaluate.knowledge", {
        "ds": boot, "out": os.path.join(out_dir, "evaluate_knowledge.json")}, warehouse=wh)
    print(f"demo: knowledge of {boot}: next-item HR@10 {knowledge['lum_hr@10']:.4f} vs popularity "
          f"{knowledge['popularity_hr@10']:.4f} ({knowledge['users_evaluated']} users)", flush=True)

    daily_loss = [(ds, _meta(warehouse, ds).get("metrics", {}).get("loss")) for ds in window]
    summary = {
        "source": source, "bootstrap_ds": boot, "start": window[0], "end": window[-1], "days": len(window),
        "hr@10": retrieval.get("hr@10"), "ndcg@10": retrieval.get("ndcg@10"),
        "target_cond_hr@10": retrieval.get("target_cond_hr@10"),
        "auc_without_lum": auc["auc_without_lum"], "auc_with_lum": auc["auc_with_lum"], "lift": auc["lift"],
        "knowledge_hr@10": knowledge["lum_hr@10"], "popularity_hr@10": knowledge["popularity_hr@10"],
        "lr_lift": lifts[1]["lift"], "sample_user": sample_user, "seconds": round(time.perf_counter() - started, 1),
    }
    report = write_report(out_dir, {
        "title": f"lum-pipeline demo ({source}, {window[0]} .. {window[-1]})", "summary": summary,
        "loss": {"points": loss_points, "daily": [d for d in daily_loss if d[1] is not None]},
        "retrieval": retrieval, "auc": auc, "lifts": lifts, "knowledge": knowledge["table"], "timings": timings,
        "query": rows})
    summary["report"] = report
    with open(os.path.join(out_dir, "demo.json"), "w") as fh:
        json.dump({**summary, "timings": timings, "ingest": ingest, "evaluate": lifts,
                   "knowledge": knowledge}, fh, indent=1, default=str)
    print(f"demo: report {report} ({summary['seconds']:.0f} s in all)", flush=True)
    return summary
