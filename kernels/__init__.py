"""Attention kernels for LUM: jagged grouped-query masked attention.

``grouped_query_attention(q, k, v, cu_seqlens, prefix_lens, *, scale=None, backend="auto")`` is the
one public entry point (API fixed in CONTRACT.md). Backends: ``triton`` (kernels/triton_grouped.py),
``torch`` (kernels/torch_grouped.py, the efficient CPU/training path); ``kernels/reference.py`` is the
explicit-mask oracle used by the tests. Importing this package never imports triton or touches a device.
"""

from kernels.grouped_query_attention import BACKENDS, grouped_query_attention

__all__ = ["BACKENDS", "grouped_query_attention"]
