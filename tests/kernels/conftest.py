"""Fixtures for the kernel tests; the batch helpers live in jagged_batches.py."""

from __future__ import annotations

import pytest
from jagged_batches import EDGE_LENGTHS, EDGE_PREFIXES, jagged_batch


@pytest.fixture
def edge_batch():
    """``edge_batch(**kw)``: the issue-4 edge-case batch (see jagged_batches.EDGE_LENGTHS)."""
    return lambda **kw: jagged_batch(EDGE_LENGTHS, EDGE_PREFIXES, **kw)
