"""A bucketed ``user_sequences`` partition without Spark: one staged file per bucket, rows by user_id, and the
build record's bucket count in the commit metadata (the layout ``lum run sequences`` writes)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from stages.core.hashing import bucket_of
from stages.warehouse import buckets as bucket_reader
from stages.warehouse.buckets import RECORD_BUCKETS, RECORD_DS
from stages.warehouse.facade import Warehouse


def write_bucketed(warehouse: str, table: pa.Table, *, ds: str, buckets: int) -> pa.Table:
    """Write ``table`` (user_sequences rows without ``bucket``) as partition ``ds`` in ``buckets`` buckets."""
    wh = Warehouse(warehouse)
    of = bucket_of(table.column("user_id").to_numpy(), buckets)
    table = table.append_column("bucket", pa.array(of, pa.int32()))
    stager = wh.stage_partition("user_sequences", ds=ds, run_id=f"bucketed-{buckets}")
    for b in range(buckets):
        part = table.filter(pa.array(of == b)).sort_by("user_id")
        if part.num_rows:
            stager.write(part)
    stager.finish()
    wh.commit_staged("user_sequences", ds=ds, run_id=f"bucketed-{buckets}",
                     metadata={RECORD_DS: ds, RECORD_BUCKETS: str(buckets)})
    return table


def synthetic_sequences(n_users: int, *, seed: int = 0) -> pa.Table:
    """user_sequences rows of ``n_users`` users with sparse ids (in shuffled order), 1..5 behaviours each."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(np.arange(1, 50 * n_users), size=n_users, replace=False)
    lengths = rng.integers(1, 6, size=n_users)
    rows = [{"user_id": int(u), "item_ids": [int(u) + k for k in range(n)],
             "conditions": [f"category={'abc'[(int(u) + k) % 3]}" for k in range(n)],
             "ts": [k * 60_000_000 for k in range(n)], "ratings": [4.0] * n, "history_len": int(n),
             "total_events": int(n)} for u, n in zip(ids, lengths)]
    table = pa.Table.from_pylist(rows)
    return table.set_column(table.schema.get_field_index("ts"), "ts",
                            table.column("ts").cast(pa.list_(pa.timestamp("us", tz="UTC"))))


def spy_opened(monkeypatch) -> list[int]:
    """The bucket of every file the bucketed read opens from now on, in order (filled as files open)."""
    seen: list[int] = []
    real = bucket_reader.open_parquet

    def spy(handle, *, dictionary):
        pf = real(handle, dictionary=dictionary)
        seen.append(pf.read_row_group(0, columns=["bucket"]).column("bucket")[0].as_py())
        return pf

    monkeypatch.setattr(bucket_reader, "open_parquet", spy)
    return seen
