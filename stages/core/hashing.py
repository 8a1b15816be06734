"""The stable user hash: splitmix64 in numpy uint64 arithmetic, so every process, machine and Python version puts
a user in the same shard (Python's ``hash`` is salted per process for str). Infer's shards and pretrain's DDP
ranks both split users by ``shard_of``.
"""

from __future__ import annotations

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def stable_hash64(ids: np.ndarray) -> np.ndarray:
    """splitmix64 of int64 ids -> uint64 (n,), vectorised."""
    x = np.asarray(ids, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        x = x ^ (x >> np.uint64(31))
    return x


def shard_of(ids: np.ndarray, count: int) -> np.ndarray:
    """Shard index in [0, count) of every id (int64 (n,))."""
    if count < 1:
        raise ValueError(f"shard count must be >= 1, got {count}")
    return (stable_hash64(ids) % np.uint64(count)).astype(np.int64)
