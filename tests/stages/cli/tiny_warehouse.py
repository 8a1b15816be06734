"""A warehouse of seconds: synthetic events/items/users/dlrm_samples (3 days) and hand-made knowledge of two."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

DAYS = ("2000-01-01", "2000-01-02", "2000-01-03")
KNOWLEDGE_DAYS = DAYS[:2]
DIM = 4
READ_TABLES = ("events", "dlrm_samples", "user_knowledge", "item_knowledge")  # all have partition DAYS[1]


def make_tiny_warehouse(path: str) -> str:
    from stages.pipeline.registry import run_with
    from stages.warehouse.facade import Warehouse

    run_with("ingest.synthetic", {"users": 40, "items": 20, "categories": 2, "days": len(DAYS), "start": DAYS[0]},
             warehouse=path)
    wh = Warehouse(path)
    rng = np.random.default_rng(0)
    users, items, conditions = np.arange(1, 41, dtype=np.int64), np.arange(1, 21, dtype=np.int64), ["c=0", "c=1"]
    for ds in KNOWLEDGE_DAYS:
        n = len(users) * len(conditions)
        wh.write_partition("user_knowledge", pa.table({
            "ds": [ds] * n, "user_id": np.repeat(users, len(conditions)), "condition": conditions * len(users),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(rng.random(n * DIM, np.float32)), DIM),
            "model_version": [f"lum-{ds}"] * n, "history_len": pa.array(np.ones(n), pa.int32())}), ds=ds)
        wh.write_partition("item_knowledge", pa.table({
            "ds": [ds] * len(items), "item_id": items,
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(rng.random(len(items) * DIM, np.float32)), DIM),
            "model_version": [f"lum-{ds}"] * len(items)}), ds=ds)
    return path
