"""kernels.varlen adapts to the installed varlen_attn signature (checked on CPU with stand-ins; the real
function runs in tests/kernels/test_gpu.py)."""

from __future__ import annotations

import inspect

import pytest
import torch
from jagged_batches import jagged_batch

import kernels.varlen as varlen
from kernels.reference import reference_attention


def _stand_in(calls: list[dict], signature: str):
    """A varlen_attn with an older or newer keyword set, computing causal attention with the reference."""

    def run(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, **kwargs):
        calls.append(kwargs)
        assert kwargs.get("window_size", (-1, 0)) == (-1, 0) and kwargs.get("is_causal", True)
        scale = kwargs.get("scale")
        return reference_attention(query, key, value, cu_seq_q, cu_seq_q[1:] - cu_seq_q[:-1], scale=scale)

    names = {"old": ["is_causal"], "new": ["scale", "window_size", "enable_gqa"]}[signature]
    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD)
              for n in ("query", "key", "value", "cu_seq_q", "cu_seq_k", "max_q", "max_k")]
    params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None) for n in names]
    run.__signature__ = inspect.Signature(params)
    return run


@pytest.mark.parametrize("signature", ["old", "new"])
def test_varlen_keywords_follow_the_installed_signature(monkeypatch, signature):
    calls: list[dict] = []
    fn = _stand_in(calls, signature)
    monkeypatch.setattr(varlen, "varlen_fn", lambda: fn)
    monkeypatch.setattr(varlen, "_params", lambda: frozenset(inspect.signature(fn).parameters))
    lengths = [5, 9, 1]
    q, k, v, cu, pl = jagged_batch(lengths, lengths, heads=4, kv_heads=2, head_dim=16)
    out = varlen.varlen_causal_attention(q, k, v, cu, max(lengths), scale=0.3)
    torch.testing.assert_close(out.double(), reference_attention(q, k, v, cu, pl, scale=0.3).double(),
                               atol=2e-5, rtol=2e-5)
    if signature == "old":  # causal flag, scale folded into q, k/v heads repeated
        assert calls == [{"is_causal": True}]
    else:
        assert calls == [{"window_size": (-1, 0), "scale": 0.3, "enable_gqa": True}]


def test_varlen_unavailable_without_cuda():
    assert not varlen.available(torch.device("cpu"))
