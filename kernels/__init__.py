"""Attention kernels for LUM: jagged grouped-query masked attention and packed causal attention.

``grouped_query_attention(q, k, v, cu_seqlens, prefix_lens, *, scale=None, backend="auto")`` is the
per-call entry point (inference: history once, conditions against it); ``plan_grouped_attention`` checks
such a batch once for every layer of a forward; ``plan_causal_attention`` plans packed causal attention once
per training batch. All dispatch in kernels.dispatch to one of BACKENDS.
Importing this package never imports triton or touches a device.
"""

from kernels.dispatch import BACKENDS, grouped_query_attention, plan_causal_attention, plan_grouped_attention

__all__ = ["BACKENDS", "grouped_query_attention", "plan_causal_attention", "plan_grouped_attention"]
