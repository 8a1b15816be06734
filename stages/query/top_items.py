"""``lum query --top-items K``: a user's best items of the catalog by the knowledge score (``stages.query.score``).

Reads only the knowledge tables of day ds (``user_knowledge`` rows of the requested users, ``item_knowledge``)
and the ``items`` dimension; ``exclude_seen`` also reads the users' ``user_sequences`` row of ds and drops the
items in it. Unknown users give no rows. Each row shows the score and its two terms: log p(category | history)
(``log_p_category``) and log p(item | history, category) (``log_p_item``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from stages.core.dates import check_ds
from stages.core.tables import format_table
from stages.query.catalog import read_catalog, read_users
from stages.query.score import knowledge_scores, top_k
from stages.warehouse.facade import Warehouse


def seen_items(wh: Warehouse, ds: str, user_ids: Sequence[int]) -> dict[int, set[int]]:
    """item_ids of each user's ``user_sequences`` row of day ds (the behaviours the model read)."""
    if ds not in wh.partitions("user_sequences"):
        raise ValueError(f"user_sequences has no partition ds={ds} (needed by --exclude-seen)")
    rows = wh.read("user_sequences", ds=ds, columns=["user_id", "item_ids"],
                   filters=[("user_id", "in", list(user_ids))])
    return {int(u): set(items or []) for u, items in zip(rows.column("user_id").to_pylist(),
                                                         rows.column("item_ids").to_pylist())}


def top_items(warehouse: Warehouse | str | None, *, user_ids: Sequence[int], ds: str | None = None, k: int = 10,
              exclude_seen: bool = False) -> pa.Table:
    """Rows (user_id, rank, item_id, title, category, score, log_p_category, log_p_item), best first per user."""
    wh = Warehouse.of(warehouse)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"top-items must be a positive integer, got {k!r}")
    if ds is None:
        ds = wh.latest_partition("user_knowledge")
        if ds is None:
            raise ValueError("table user_knowledge has no partitions; run `lum run infer` first")
    check_ds(ds)
    catalog = read_catalog(wh, ds)
    users = read_users(wh, ds, catalog, user_ids=user_ids)
    scores = knowledge_scores(users.embedding, users.has, users.logprob, users.temperature, catalog.embedding,
                              catalog.item_col)
    excluded = np.zeros(scores.shape, bool)
    if exclude_seen and len(users.user_ids):
        seen = seen_items(wh, ds, users.user_ids.tolist())
        for row, uid in enumerate(users.user_ids.tolist()):
            pos = catalog.index(np.fromiter(seen.get(uid, ()), dtype=np.int64))
            excluded[row, pos[pos >= 0]] = True
    cols, best = top_k(scores, k, excluded)
    out: list[dict[str, Any]] = []
    for row, uid in enumerate(users.user_ids.tolist()):
        for rank, (i, s) in enumerate(zip(cols[row].tolist(), best[row].tolist()), start=1):
            if not np.isfinite(s):
                break
            c = int(catalog.item_col[i])
            lp = float(users.logprob[row, c])
            out.append({"user_id": uid, "rank": rank, "item_id": int(catalog.item_ids[i]), "title": catalog.titles[i],
                        "category": catalog.categories[i], "score": s, "log_p_category": lp, "log_p_item": s - lp})
    schema = pa.schema([("user_id", pa.int64()), ("rank", pa.int32()), ("item_id", pa.int64()),
                        ("title", pa.string()), ("category", pa.string()), ("score", pa.float64()),
                        ("log_p_category", pa.float64()), ("log_p_item", pa.float64())])
    table = pa.Table.from_pylist(out, schema=schema)
    return table.replace_schema_metadata({b"lum.ds": ds.encode()})


def cli(args: argparse.Namespace, *, warehouse: Warehouse | str | None) -> dict[str, Any]:
    """``lum query --top-items K``: print the ranked items (table or JSON lines), return the summary."""
    if args.conditions or getattr(args, "as_of", None) is not None \
            or (args.table or "user_knowledge") != "user_knowledge":
        raise ValueError("--top-items ranks over every condition of the newest table version; "
                         "drop --condition, --as-of and --table")
    rows = top_items(warehouse, user_ids=args.user_ids, ds=args.ds, k=args.top_items,
                     exclude_seen=bool(getattr(args, "exclude_seen", False)))
    records = rows.to_pylist()
    if getattr(args, "format", "table") == "json":
        for rec in records:
            print(json.dumps(rec))
    elif records:
        print(format_table(records))
    else:
        print(f"(no knowledge for user_id {', '.join(map(str, args.user_ids))})", file=sys.stderr)
    ds = (rows.schema.metadata or {}).get(b"lum.ds", b"").decode()
    return {"table": "user_knowledge", "ds": ds, "top_items": args.top_items, "rows": rows.num_rows,
            "users": len(set(rows.column("user_id").to_pylist())), "exclude_seen": bool(args.exclude_seen)}
