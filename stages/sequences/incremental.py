"""Incremental ``user_sequences``: partition D = partition D-1 extended by day D's events.

Every behaviour of day D has ts >= the start of D > every ts kept in D-1's rows, so a user's last ``max_len``
behaviours up to D are the last ``max_len`` of (D-1's list ++ D's behaviours in (ts, event_idx) order), and
``total_events`` adds up: the same rows as the full build, provided D-1's rows are what a full build would give
today. ``plan`` checks that from the build record every build stores in its commit metadata (``RECORD``): the
same ``max_len``, condition features and ``liked`` threshold; the same ``events`` files for days <= D-1 (a fingerprint of their
paths: re-ingesting a day changes it); ``items`` unchanged for the items D-1 used (no category changed, and no
item added while D-1 had ``<unk>`` conditions); and the record describes the files now in partition D-1 (row
count). Any other case is a full rebuild, its reason logged; a bucket count unlike D-1's is a ``ValueError`` (the
layout of consecutive days must agree; ``full_rebuild=true`` may change it). D-1 rows without buckets (older
partitions) extend fine: every row's ``bucket`` is computed from its user_id. D-1 files that cannot be read are a
``ValueError`` (a storage problem to look at, not to hide); ``full_rebuild=true`` rebuilds without reading them.
Users without events on D carry their D-1 row: every partition stays a full snapshot.
"""

from __future__ import annotations

import hashlib
import logging

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake.exceptions import DeltaError

from schemas.user_sequences import LIST_COLUMNS
from stages.core.dates import prev_day
from stages.warehouse.commit import filesystem_for
from stages.warehouse.facade import Warehouse

log = logging.getLogger(__name__)

TABLE = "user_sequences"
RECORD = "lum.sequences."  # prefix of the build record's keys (commit metadata, mirrored in the table config)
HISTORY_LIMIT = 200  # newest commits searched for D-1's build record
UNKNOWN = "category=<unk>"  # the condition part of an item missing from items
UNRATED = "liked=<unk>"  # the condition part of a behaviour without a rating


def build_record(*, ds: str, max_len: int, conditions: str, events_fingerprint: str, items_version: int | None,
                 rows: int, unknown_users: int, mode: str, liked_threshold: float | None = None,
                 buckets: int | None = None) -> dict[str, str]:
    """What a build of partition ``ds`` used: stored with its commit so the next day can check it
    (``liked_threshold`` only when ``liked`` is a condition feature; ``buckets``: the bucket count)."""
    record = {"ds": ds, "max_len": max_len, "conditions": conditions, "events": events_fingerprint,
              "items_version": "" if items_version is None else items_version, "rows": rows,
              "unknown_users": unknown_users, "mode": mode}
    if buckets is not None:
        record["buckets"] = buckets
    if liked_threshold is not None:
        record["liked_threshold"] = repr(float(liked_threshold))
    return {f"{RECORD}{k}": str(v) for k, v in record.items()}


def events_fingerprint(wh: Warehouse, version: int, through: str) -> str:
    """sha256 of the sorted paths of the ``events`` files with ds <= ``through`` at ``version`` (the Delta log
    only: no data file is opened). Every write names new files, so any change to those days changes it."""
    actions = pa.table(wh.delta_table("events", version).get_add_actions(flatten=True))
    paths = actions.filter(pc.less_equal(actions.column("partition.ds"), through)).column("path")
    return hashlib.sha256("\n".join(sorted(paths.to_pylist())).encode()).hexdigest()


def find_record(wh: Warehouse, ds: str, version: int | None = None) -> dict[str, str] | None:
    """The build record of the newest commit (of the last ``HISTORY_LIMIT``; at or before ``version`` when
    given) that built partition ``ds``."""
    for commit in wh.history(TABLE, HISTORY_LIMIT):
        if version is not None and commit.get("version", -1) > version:
            continue
        if commit.get(f"{RECORD}ds") == ds:
            return {k: str(v) for k, v in commit.items() if k.startswith(RECORD)}
    return None


def plan(wh: Warehouse, *, ds: str, max_len: int, conditions: str, events_version: int,
         items_version: int | None, liked_threshold: float | None = None,
         buckets: int | None = None) -> tuple[str | None, str]:
    """(D-1 when day ``ds`` can extend it, else None; the reason). ValueError: D-1's files cannot be read, or
    D-1 was built with another bucket count than ``buckets``."""
    prev = prev_day(ds)
    if prev not in wh.partitions(TABLE):
        return None, f"no {TABLE} partition {prev}"
    record = find_record(wh, prev)
    if record is None:
        return None, f"no build record of partition {prev} in the last {HISTORY_LIMIT} commits"
    built = (record.get(f"{RECORD}max_len"), record.get(f"{RECORD}conditions"))
    if built != (str(max_len), conditions):
        return None, (f"partition {prev} was built with max_len={built[0]} conditions={built[1]}, "
                      f"this run uses max_len={max_len} conditions={conditions}")
    if liked_threshold is not None and record.get(f"{RECORD}liked_threshold") != repr(float(liked_threshold)):
        return None, (f"partition {prev} was built with liked_threshold="
                      f"{record.get(f'{RECORD}liked_threshold', '(none)')}, this run uses {float(liked_threshold)!r}")
    actions = pa.table(wh.delta_table(TABLE).get_add_actions(flatten=True))
    files = actions.filter(pc.equal(actions.column("partition.ds"), prev))
    if str(pc.sum(files.column("num_records")).as_py() or 0) != record.get(f"{RECORD}rows"):
        return None, f"partition {prev} was rewritten after its build record"
    if events_fingerprint(wh, events_version, prev) != record.get(f"{RECORD}events"):
        return None, f"events of days <= {prev} changed after partition {prev} was built"
    reason = _items_changed(wh, record, prev, conditions, items_version)
    if reason:
        return None, reason
    then = record.get(f"{RECORD}buckets")
    if buckets is not None and then is not None and then != str(buckets):
        raise ValueError(f"{TABLE} partition {prev} has buckets={then}, this run uses buckets={buckets}; "
                         f"rebuild {ds} with --set full_rebuild=true to change the bucket count")
    _check_readable(wh, prev, files.column("path").to_pylist(), ds)
    return prev, f"extends partition {prev}"


def _items_changed(wh: Warehouse, record: dict[str, str], prev: str, conditions: str,
                   items_version: int | None) -> str | None:
    """Why D-1's conditions may differ from today's items, or None when they cannot."""
    if "category" not in conditions.split(","):
        return None
    then = record.get(f"{RECORD}items_version", "")
    if then == ("" if items_version is None else str(items_version)):
        return None
    try:
        old = wh.read("items", columns=["item_id", "category"], version=int(then))
        now = wh.read("items", columns=["item_id", "category"], version=items_version)
    except (ValueError, OSError, DeltaError) as exc:
        return f"items version {then} (used by partition {prev}) cannot be read: {str(exc).splitlines()[0]}"
    joined = old.join(now, "item_id", join_type="left outer", right_suffix="_now")
    unk = pa.scalar("<unk>")
    changed = pc.not_equal(pc.coalesce(joined.column("category"), unk),
                           pc.coalesce(joined.column("category_now"), unk))
    n_changed = pc.sum(pc.cast(changed, pa.int64())).as_py() or 0
    if n_changed:
        return f"items changed the category of {n_changed} item(s) after partition {prev} was built"
    added = pc.sum(pc.cast(pc.invert(pc.is_in(now.column("item_id"), value_set=old.column("item_id"))),
                           pa.int64())).as_py() or 0
    if added and record.get(f"{RECORD}unknown_users", "0") != "0":
        return f"items gained {added} item(s) and partition {prev} has {UNKNOWN} conditions"
    return None


def _check_readable(wh: Warehouse, prev: str, relpaths: list[str], ds: str) -> None:
    """Open every footer of partition ``prev``: a missing or corrupt file is a one-line ValueError."""
    fs, root = filesystem_for(wh.table_uri(TABLE))
    for rel in relpaths:
        try:
            with fs.open_input_file(f"{root}/{rel}") as handle:
                names = pq.read_schema(handle).names
        except (OSError, pa.ArrowException) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"{TABLE} partition {prev} cannot be read ({rel}: {first}); rebuild {ds} "
                             "with --set full_rebuild=true") from None
        missing = [c for c in ("user_id", *LIST_COLUMNS, "total_events") if c not in names]
        if missing:
            raise ValueError(f"{TABLE} partition {prev} cannot be read ({rel} lacks {', '.join(missing)}); "
                             f"rebuild {ds} with --set full_rebuild=true")


def extend(prev_df, day_df, *, ds: str, max_len: int):
    """Spark rows of partition ``ds``: ``prev_df`` (D-1's rows) extended by ``day_df`` (``build_sequences`` over
    day D's events only), each list cut to its last ``max_len``; users in only one side keep that side's row.
    The ids of day D's users are broadcast, so D-1's rows of the other users are copied without a shuffle; only
    the users of day D go through the join."""
    # deferred: pyspark loads the JVM bridge; importing the stage (configs, registry) must not
    from pyspark.sql import functions as F

    day_users = F.broadcast(day_df.select("user_id"))
    carried = prev_df.join(day_users, on="user_id", how="left_anti").select(
        F.lit(ds).alias("ds"), "user_id", *LIST_COLUMNS, "total_events")
    p = prev_df.join(day_users, on="user_id", how="left_semi").select(
        "user_id", *[F.col(c).alias(f"p_{c}") for c in LIST_COLUMNS], F.col("total_events").alias("p_total"))
    d = day_df.select("user_id", *[F.col(c).alias(f"d_{c}") for c in LIST_COLUMNS],
                      F.col("total_events").alias("d_total"))
    joined = p.join(d, on="user_id", how="right_outer")  # every user of day D, with D-1's row when there is one
    length = F.size(F.col("p_item_ids")) + F.size(F.col("d_item_ids"))
    start = F.greatest(length - F.lit(max_len) + F.lit(1), F.lit(1))

    def merged(c: str):
        old, new = F.col(f"p_{c}"), F.col(f"d_{c}")
        return F.when(old.isNull(), new).otherwise(F.slice(F.concat(old, new), start, F.lit(max_len))).alias(c)

    total = F.coalesce(F.col("p_total"), F.lit(0)) + F.col("d_total")
    updated = joined.select(F.lit(ds).alias("ds"), "user_id", *[merged(c) for c in LIST_COLUMNS],
                            total.cast("long").alias("total_events"))
    return carried.unionByName(updated).withColumn("history_len", F.size("item_ids").cast("int"))


def count_rows(df, conditions: str) -> tuple[int, int, int]:
    """(rows, users with a ``category=<unk>`` condition, behaviours with ``liked=<unk>``) of Spark rows ``df``,
    in one pass (the second and third are 0 when category / liked is not a condition feature)."""
    # deferred: as in extend
    from pyspark.sql import functions as F

    features = conditions.split(",")
    unknown = F.exists("conditions", lambda c: c.contains(UNKNOWN)) if "category" in features else F.lit(False)
    unrated = F.size(F.filter("conditions", lambda c: c.contains(UNRATED))) if "liked" in features else F.lit(0)
    row = df.agg(F.count(F.lit(1)).alias("rows"), F.sum(unknown.cast("long")).alias("unknown"),
                 F.sum(unrated.cast("long")).alias("unrated")).collect()[0]
    return int(row["rows"]), int(row["unknown"] or 0), int(row["unrated"] or 0)
