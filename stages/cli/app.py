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

from stages.cli.parser import INGEST_SOURCES, UsageError, build_parser
from stages.core.config import parse_overrides
from stages.core.dates import check_ds, day_range
from stages.core.redact import install_log_redaction, redact, redact_obj
from stages.core.shutdown import end_process, run_command
from stages.core.spark import out_of_memory
from stages.core.tables import format_table
from stages.pipeline import registry

if TYPE_CHECKING:
    from stages.warehouse.facade import Warehouse

log = logging.getLogger("lum")


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


def cmd_plot(args: argparse.Namespace, warehouse: Warehouse) -> dict[str, Any]:
    del warehouse  # plots read reports only
    from stages.bench.scale_plot import write_plot  # deferred: matplotlib stays out of the other commands

    reports = []
    for path in args.reports:
        with open(path) as fh:
            try:
                reports.append(json.load(fh))
            except json.JSONDecodeError as exc:
                raise ValueError(f"plot {args.kind}: {path} is not JSON ({exc.msg} at line {exc.lineno})") from None
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_plot(reports, args.out, title=args.title)
    return {"plot": args.kind, "out": args.out, "reports": len(reports)}


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
    "evaluate": cmd_evaluate, "bench": cmd_bench, "plot": cmd_plot, "demo": cmd_demo, "verify": cmd_verify,
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
    except Exception as exc:  # a Spark job out of JVM memory gets one line; anything else its traceback
        msg = out_of_memory(exc)
        if msg is None:
            raise
        if args.verbose:
            log.exception("command failed")
        print(f"lum: error: {redact(msg)}", file=sys.stderr)
        return 1
    summary = dict(summary or {})
    summary.setdefault("seconds", round(time.perf_counter() - started, 3))
    # One write() of the whole line: under torchrun several ranks share stdout, and print() may split a
    # line into two writes that interleave; a single write below PIPE_BUF (4 KiB) is atomic on a pipe.
    sys.stdout.write(redact(json.dumps(summary, default=str, separators=(",", ":"))) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
