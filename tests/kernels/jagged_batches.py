"""Random jagged batches for the kernel tests (seeded, small: the Triton interpreter runs serially).

A uniquely named module (not conftest) so ``from jagged_batches import ...`` never resolves to another
directory's conftest."""

from __future__ import annotations

import itertools

import torch


def jagged_batch(lengths: list[int], prefixes: list[int], *, heads: int = 2, kv_heads: int | None = None,
                 head_dim: int = 32, dtype: torch.dtype = torch.float32, seed: int = 0,
                 requires_grad: bool = False):
    """(q, k, v, cu_seqlens, prefix_lens) for sequences of ``lengths`` with ``prefixes`` history tokens."""
    assert len(lengths) == len(prefixes)
    gen = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    kv_heads = heads if kv_heads is None else kv_heads

    def rand(h: int) -> torch.Tensor:
        x = torch.randn(total, h, head_dim, generator=gen, dtype=torch.float32).to(dtype)
        return x.requires_grad_(requires_grad)

    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
    return rand(heads), rand(kv_heads), rand(kv_heads), cu, torch.tensor(prefixes, dtype=torch.int32)


def random_lengths(n: int, *, max_prefix: int, max_cond: int, seed: int) -> tuple[list[int], list[int]]:
    """n sequences: prefix in [0, max_prefix], conditions in [0, max_cond]."""
    gen = torch.Generator().manual_seed(seed)
    prefixes = torch.randint(0, max_prefix + 1, (n,), generator=gen).tolist()
    conds = torch.randint(0, max_cond + 1, (n,), generator=gen).tolist()
    return [p + c for p, c in zip(prefixes, conds)], prefixes


# Edge cases from issue 4: prefix 0 and 1, N = 0 and 1, empty sequences, lengths off the block grid,
# one long sequence among short ones.
EDGE_LENGTHS = [0, 1, 1, 2, 5, 70, 17, 200, 3, 129]
EDGE_PREFIXES = [0, 0, 1, 1, 0, 64, 16, 190, 3, 128]
