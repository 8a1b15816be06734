"""stages.core.heap: free heap pages go back to the OS where the C library can (glibc), else nothing happens."""

from __future__ import annotations

import platform

import pytest

from stages.core import heap


def test_release_uses_malloc_trim_on_glibc():
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc_trim is glibc's; elsewhere release() is a documented no-op")
    assert heap.release() is True


def test_release_is_a_no_op_without_malloc_trim(monkeypatch):
    monkeypatch.setattr(heap, "_trim", lambda: None)
    assert heap.release() is False
