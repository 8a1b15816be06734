"""Users -> jagged model inputs for grouped-query inference, and the stable user hash for sharding.

A user with L behaviours and N conditions costs 2L + N tokens grouped (the history once, then one token per
condition) and N (2L + 1) naive. ``pack_by_budget`` cuts a user list, in order, into batches under
``token_budget`` tokens (a larger user gets a batch of its own), so activation memory per forward is bounded
whatever the history lengths. Jagged layout (values + offsets): ``hist_item_rows`` (sum L,) int64,
``hist_cond_ids`` (sum L, ...) int64, ``cu_hist`` (B+1,) int32; ``query_cond_ids`` (sum N, ...), ``cu_queries``
(B+1,) int32. ``stable_hash64`` / ``shard_of`` (the stable user hash) live in ``stages.core.hashing``; this module
re-exports them under their old names.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from stages.core.hashing import shard_of, stable_hash64  # noqa: F401 (stable_hash64: this module's name too)
from stages.warehouse import staging


@dataclass(frozen=True)
class ShardSpec:
    """One process's share of the users, or the final publish step (``commit``)."""

    index: int | None  # this shard, 0 <= index < count; None for the commit step
    count: int  # how many shards the users are split into
    commit: bool = False  # True: publish the partition from every shard's manifest, compute nothing

    @property
    def label(self) -> str:
        return f"commit/{self.count}" if self.commit else f"{self.index}/{self.count}"


def parse_shard(spec: str | None, env: dict[str, str] | None = None) -> ShardSpec | None:
    """``"i/n"`` -> shard i of n; ``"commit/n"`` -> the publish step; None -> RANK/WORLD_SIZE or one process.

    Under torchrun (``WORLD_SIZE`` > 1) the rank is the shard; the commit is then made by rank 0 after a
    barrier (``stages.infer.publish.torchrun_commit``). Returns None for an unsharded run. ``"i/n"`` is
    read by the staging protocol's parser (``stages.warehouse.staging.parse_shard``), so both agree.
    """
    env = os.environ if env is None else env
    if spec is None or spec == "":
        world = int(env.get("WORLD_SIZE", "1") or 1)
        if world <= 1:
            return None
        index, count = staging.parse_shard(f"{int(env.get('RANK', '0'))}/{world}")
        return ShardSpec(index=index, count=count)
    head, sep, tail = str(spec).partition("/")
    if head == "commit":
        if not sep or not tail.isdigit() or int(tail) < 1:
            raise ValueError(f"shard must be i/n or commit/n with n >= 1, got {spec!r}")
        return ShardSpec(index=None, count=int(tail), commit=True)
    index, count = staging.parse_shard(str(spec))
    return ShardSpec(index=index, count=count)


def pack_by_budget(token_counts: Sequence[int] | np.ndarray, token_budget: int) -> list[slice]:
    """Cut users (in the given order) into contiguous slices of at most ``token_budget`` tokens.

    A single user above the budget forms its own slice (it must still run). O(n) greedy.
    """
    if token_budget < 1:
        raise ValueError(f"token_budget must be >= 1, got {token_budget}")
    counts = np.asarray(token_counts, dtype=np.int64)
    out: list[slice] = []
    start, used = 0, 0
    for i, c in enumerate(counts.tolist()):
        if i > start and used + c > token_budget:
            out.append(slice(start, i))
            start, used = i, 0
        used += c
    if start < len(counts):
        out.append(slice(start, len(counts)))
    return out


def offsets(lengths: Sequence[int] | np.ndarray) -> np.ndarray:
    """Lengths (B,) -> cumulative offsets int32 (B+1,) starting at 0."""
    lens = np.asarray(lengths, dtype=np.int64)
    out = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=out[1:])
    if out[-1] > np.iinfo(np.int32).max:
        raise ValueError(f"batch has {out[-1]} tokens, more than int32 offsets hold")
    return out.astype(np.int32)


@dataclass
class JaggedBatch:
    """Model inputs for B users (torch tensors on the target device) and where their rows go."""

    users: slice  # the users of the chunk in this batch
    hist_item_rows: torch.Tensor  # LongTensor (sum L,)
    hist_cond_ids: torch.Tensor  # LongTensor (sum L, ...) condition ids of each behaviour
    cu_hist: torch.Tensor  # IntTensor (B+1,)
    query_cond_ids: torch.Tensor  # LongTensor (sum N, ...)
    cu_queries: torch.Tensor  # IntTensor (B+1,)
    n_tokens: int  # 2 * sum L + sum N (grouped cost)
    hist_ts: torch.Tensor | None = None  # LongTensor (sum L,) epoch seconds (time-aware models)
    query_ts: torch.Tensor | None = None  # LongTensor (B,) epoch seconds of the query time


def build_batch(users: slice, hist_items: list[np.ndarray], hist_conds: list[np.ndarray],
                query_conds: list[np.ndarray], device: str | torch.device = "cpu",
                hist_ts: list[np.ndarray] | None = None, query_ts: int | None = None) -> JaggedBatch:
    """Concatenate per-user arrays of ``users`` into one jagged batch (values + int32 offsets); ``hist_ts``
    (epoch seconds per behaviour) and ``query_ts`` (one query time for every user) feed time-aware models."""
    items = hist_items[users]
    conds = hist_conds[users]
    queries = query_conds[users]
    hist_lens = [len(a) for a in items]
    query_lens = [len(a) for a in queries]
    if any(n == 0 for n in query_lens):
        raise ValueError("build_batch: every user needs >= 1 query condition (filter users first)")

    def cat(parts: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.concatenate(parts).astype(np.int64, copy=False)).to(device)

    return JaggedBatch(
        users=users,
        hist_item_rows=cat(items),
        hist_cond_ids=cat(conds),
        cu_hist=torch.from_numpy(offsets(hist_lens)).to(device),
        query_cond_ids=cat(queries),
        cu_queries=torch.from_numpy(offsets(query_lens)).to(device),
        n_tokens=2 * sum(hist_lens) + sum(query_lens),
        hist_ts=None if hist_ts is None else cat(hist_ts[users]),
        query_ts=None if query_ts is None else torch.full((len(items),), int(query_ts), dtype=torch.int64,
                                                          device=device),
    )


@dataclass
class Histories:
    """The (cut) histories of a chunk's users as flat arrays: user u's behaviours are ``offsets[u]:offsets[u+1]``."""

    user_ids: np.ndarray   # (U,) int64
    lengths: np.ndarray    # (U,) int64 behaviours kept (<= max_history)
    offsets: np.ndarray    # (U+1,) int64
    rows: np.ndarray       # (sum,) int64 model item rows (0 = unknown to the model)
    cond_ids: np.ndarray   # (sum,) int64 condition ids
    cond_codes: np.ndarray  # (sum,) int64 index into ``cond_values``
    cond_values: list[str]
    ts: np.ndarray | None  # (sum,) int64 epoch seconds, when asked for

    def split(self, values: np.ndarray | None, users: np.ndarray) -> list[np.ndarray] | None:
        """Per user of ``users`` (indices), its slice of ``values`` (views, no copy); None stays None."""
        if values is None:
            return None
        return [values[self.offsets[u]:self.offsets[u + 1]] for u in users.tolist()]

    def condition_strings(self, u: int) -> list[str]:
        return [self.cond_values[c] for c in self.cond_codes[self.offsets[u]:self.offsets[u + 1]].tolist()]


def flat_histories(chunk: pa.Table, vocab, max_history: int | None, *, timed: bool) -> Histories:
    """Columns user_id, item_ids, conditions (and ts when ``timed``) -> `Histories`, each user's last
    ``max_history`` behaviours; vectorised (one vocabulary lookup per chunk, condition strings dictionary-encoded)."""
    items = chunk.column("item_ids").combine_chunks()
    full = pc.fill_null(pc.list_value_length(items), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    start = np.zeros(len(full) + 1, dtype=np.int64)
    np.cumsum(full, out=start[1:])
    keep = full if max_history is None else np.minimum(full, max_history)
    user = np.repeat(np.arange(len(full)), full)
    mask = (np.arange(int(start[-1])) - start[:-1][user]) >= (full - keep)[user]
    enc = pc.dictionary_encode(pc.list_flatten(chunk.column("conditions").combine_chunks()))
    values = enc.dictionary.to_pylist()
    codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)[mask]
    ts = None
    if timed:
        flat_ts = pc.list_flatten(chunk.column("ts").combine_chunks())
        ts = pc.cast(pc.cast(flat_ts, pa.timestamp("us", tz="UTC")), pa.int64()).to_numpy(zero_copy_only=False)
        ts = (ts // 1_000_000).astype(np.int64)[mask]
    offsets = np.zeros(len(keep) + 1, dtype=np.int64)
    np.cumsum(keep, out=offsets[1:])
    return Histories(user_ids=chunk.column("user_id").to_numpy(), lengths=keep, offsets=offsets,
                     rows=vocab.item_rows(pc.list_flatten(items).to_numpy(zero_copy_only=False)[mask]),
                     cond_ids=vocab.condition_ids(values)[codes], cond_codes=codes, cond_values=values, ts=ts)


# ---- chunks of users in user_id order ----------------------------------------------------------------

MAX_SPILL_BUCKETS = 256  # open spill files at once; a bucket holds ceil(chunks / 256) chunks


def user_ordered_chunks(dataset: object, columns: list[str], chunk_users: int,
                        shard: ShardSpec | None = None, spill_dir: str | None = None) -> Iterator[pa.Table]:
    """Yield tables of <= ``chunk_users`` of this shard's users, sorted by user_id, chunks in increasing order.

    ``dataset``: a pyarrow dataset with ``user_id`` (one user_sequences partition). A scan already in user_id
    order streams through; otherwise rows are spilled once into up to ``MAX_SPILL_BUCKETS`` Arrow IPC files by
    user_id range under ``spill_dir`` (local disk), each then sorted and cut. Memory: the user_id column + one bucket.
    """
    def mine(table_or_batch):
        if shard is None:
            return table_or_batch
        keep = shard_of(table_or_batch.column("user_id").to_numpy(), shard.count) == shard.index
        return table_or_batch.filter(pa.array(keep))

    scan_ids = dataset.to_table(columns=["user_id"]).column("user_id").to_numpy()
    if shard is not None:
        scan_ids = scan_ids[shard_of(scan_ids, shard.count) == shard.index]
    if len(scan_ids) == 0:
        return
    if bool(np.all(np.diff(scan_ids) > 0)):  # already in order: stream
        buffer: list = []
        buffered = 0
        for batch in dataset.to_batches(columns=columns, batch_size=chunk_users):
            batch = mine(batch)
            if batch.num_rows:
                buffer.append(batch)
                buffered += batch.num_rows
            while buffered >= chunk_users:
                table = pa.Table.from_batches(buffer)
                yield table.slice(0, chunk_users)
                rest = table.slice(chunk_users)
                buffer, buffered = rest.to_batches(), rest.num_rows
        if buffered:
            yield pa.Table.from_batches(buffer)
        return
    ids = np.sort(scan_ids)
    n_chunks = -(-len(ids) // chunk_users)
    per_bucket = -(-n_chunks // MAX_SPILL_BUCKETS)
    bounds = ids[per_bucket * chunk_users::per_bucket * chunk_users]  # bucket b: bounds[b-1] <= id < bounds[b]
    with tempfile.TemporaryDirectory(prefix="lum-infer-spill-", dir=spill_dir) as tmp:
        writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}
        try:
            for batch in dataset.to_batches(columns=columns, batch_size=chunk_users):
                batch = mine(batch)
                if not batch.num_rows:
                    continue
                bucket = np.searchsorted(bounds, batch.column("user_id").to_numpy(), side="right")
                for b in np.unique(bucket).tolist():
                    if b not in writers:
                        writers[b] = pa.ipc.new_file(f"{tmp}/{b:05d}.arrow", batch.schema)
                    writers[b].write_batch(batch.filter(pa.array(bucket == b)))
        finally:
            for w in writers.values():
                w.close()
        for b in sorted(writers):
            with pa.memory_map(f"{tmp}/{b:05d}.arrow") as source:
                table = pa.ipc.open_file(source).read_all()
            table = table.take(pc.sort_indices(table, [("user_id", "ascending")]))
            for start in range(0, table.num_rows, chunk_users):
                yield table.slice(start, chunk_users)
            del table
