"""`lum bench pack` on a tiny configuration: both variants train on the same real tokens, packing removes the
padding, the report's ratios agree with its own columns, and the thread setting is restored."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.bench.pack import QUICK, Config, run
from stages.core.config import from_mapping
from stages.pipeline.registry import run_with


def test_bench_pack_tiny(tmp_path):
    before = torch.get_num_threads()
    cfg = from_mapping(Config, {"users": 24, "max_len": 100, "row_tokens": 200, "rows_per_step": 2, "d_model": 16})
    r = run(cfg, warehouse=str(tmp_path / "none"))
    packed, padded = r["table"]
    assert (packed["variant"], padded["variant"]) == ("packed", "padded")
    assert packed["real_tokens"] == padded["real_tokens"] > 0          # same sequences, pads not counted
    assert 0 <= 2 * packed["padding_share"] < padded["padding_share"]  # best-fit packing vs pad-to-longest
    s = r["summary"]
    assert s["speedup"] == pytest.approx(packed["tokens_per_s"] / padded["tokens_per_s"], abs=0.01)
    assert s["cpu_time_speedup"] == pytest.approx(packed["tokens_per_cpu_s"] / padded["tokens_per_cpu_s"], abs=0.01)
    assert s["threads"] == 1 and s["meets_target"] == (s["speedup"] >= 1.8)
    assert np.isfinite([packed["cpu_seconds"], padded["cpu_seconds"]]).all()
    assert torch.get_num_threads() == before


def test_bench_pack_rejects_bad_options(tmp_path):
    with pytest.raises(ValueError, match="threads"):
        run(from_mapping(Config, {**QUICK, "threads": 0}), warehouse=str(tmp_path))
    with pytest.raises(ValueError, match="unknown Config option"):
        from_mapping(Config, {"rows": 3})
    with pytest.raises(ValueError, match="unknown bench.pack option"):  # the CLI's path (options + --quick)
        run_with("bench.pack", {"rows": 3}, quick=True, warehouse=str(tmp_path))
