"""The GPU path compiles: lower every Triton kernel to an sm_90 cubin (ptxas) in a clean process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_kernels_compile_for_h100():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = REPO
    proc = subprocess.run([sys.executable, "-m", "kernels.compile_check", "--head-dims", "80"], check=False,
                          env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert {r["kernel"] for r in rows} == {"_fwd_kernel", "_bwd_dq_kernel", "_bwd_dkdv_kernel"}
    assert all(0 < r["shared_bytes"] <= 232448 for r in rows)  # H100: 227 KiB per block


def test_compile_check_refuses_interpreter(monkeypatch):
    from kernels.compile_check import compile_variants

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        compile_variants()
