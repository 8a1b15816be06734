"""``make gpu-check``: every GPU check in one command and one JSON report.

Parts, in order, each with its own status:
  environment  device, driver, torch/triton/CUDA versions
  kernel_tests tests/kernels/test_gpu.py natively on CUDA (TRITON_INTERPRET=0; fp32/fp16/bf16 against
               the float64 reference), in a subprocess with a time limit
  bench        ``lum bench kernels --set sweep=false`` (Triton vs compiled FlexAttention, dense-mask SDPA,
               the torch path and per-condition recomputation; useful TFLOP/s and % of a bf16 matmul)
  training     bf16 training steps of the LUM with varlen attention (finite, falling loss)
  inference    users/s of grouped inference with 512-token histories x 16 conditions (synthetic, ML-1M's shape)
The report goes to $LUM_GPU_CHECK_OUT, else $OUT/gpu-check.json when OUT is set, else reports/gpu-check.json,
and is rewritten after every part, so a run stopped early still leaves what finished; the subprocesses' logs
and the bench's own report lie beside it. Parts that would start
after the time budget (LUM_GPU_CHECK_BUDGET_S) are recorded as not run. Without CUDA nothing runs: the
report says so and the exit code is 0. With CUDA the exit code is 0 only when every part passed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from stages.bench.gpu_model import inference_check, training_check

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
NO_CUDA = "no CUDA device: gpu-check not run"
BUDGET_S = 450.0  # default wall budget: the whole check stays under 8 minutes on one GPU
TESTS_TIMEOUT_S = 200  # kernel tests subprocess (compiles dominate)
BENCH_TIMEOUT_S = 240  # bench subprocess (Triton autotune and the FlexAttention compile dominate)


def report_path() -> Path:
    if os.environ.get("LUM_GPU_CHECK_OUT"):
        return Path(os.environ["LUM_GPU_CHECK_OUT"])
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "gpu-check.json"
    return REPO / "reports" / "gpu-check.json"


def _write(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    tmp.replace(path)


def _subprocess(cmd: list[str], timeout: int, log_path: Path) -> tuple[int | None, str]:
    """(return code or None on timeout, the output's tail). The whole output goes to ``log_path`` as it
    comes, so it survives a kill of this process."""
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    with log_path.open("w") as fh:
        try:
            code: int | None = subprocess.run(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                              timeout=timeout, check=False).returncode
        except subprocess.TimeoutExpired:
            code = None
    return code, log_path.read_text(errors="replace")[-3000:]


def environment(workdir: Path) -> dict[str, Any]:
    import triton  # deferred: only on a CUDA machine

    props = torch.cuda.get_device_properties(0)
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                          "--format=csv,noheader"], capture_output=True, text=True,
                         check=False) if shutil.which("nvidia-smi") else None
    return {"device": torch.cuda.get_device_name(0), "capability": list(torch.cuda.get_device_capability(0)),
            "multiprocessors": props.multi_processor_count, "memory_gib": round(props.total_memory / 2**30, 1),
            "nvidia_smi": smi.stdout.strip() if smi else None, "torch": torch.__version__, "cuda": torch.version.cuda,
            "triton": triton.__version__, "python": platform.python_version(), "passed": True}


def kernel_tests(workdir: Path) -> dict[str, Any]:
    xml_path = Path(tempfile.mkdtemp(prefix="lum-gpu-check-")) / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "-rs",
           "tests/kernels/test_gpu.py", f"--junitxml={xml_path}"]
    code, tail = _subprocess(cmd, TESTS_TIMEOUT_S, workdir / "gpu-check-kernel-tests.log")
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    if xml_path.exists():
        suite = ET.parse(xml_path).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in counts}
    passed = code == 0 and counts["tests"] > 0 and counts["skipped"] == 0
    return {"command": " ".join(cmd[1:]), "returncode": code, "timed_out": code is None, **counts,
            "passed": passed, "output_tail": tail}


def bench(workdir: Path) -> dict[str, Any]:
    out = workdir / "gpu-check-bench-kernels.json"
    cmd = [sys.executable, "-m", "stages.cli.app", "bench", "kernels", "--set", "sweep=false", "--out", str(out),
           "--warehouse", tempfile.mkdtemp(prefix="lum-gpu-check-warehouse-")]
    out.unlink(missing_ok=True)
    code, tail = _subprocess(cmd, BENCH_TIMEOUT_S, workdir / "gpu-check-bench.log")
    result: dict[str, Any] = {"command": "lum bench kernels --set sweep=false", "returncode": code,
                              "timed_out": code is None}
    if out.exists():
        report = json.loads(out.read_text())
        result.update(summary=report.get("summary"), table=report.get("table"), config=report.get("config"))
    triton_row = next((r for r in result.get("table") or [] if r["method"] == "triton"), {})
    result["passed"] = code == 0 and bool(triton_row.get("ms"))
    if not result["passed"]:
        result["output_tail"] = tail
    return result


def training(workdir: Path) -> dict[str, Any]:
    return training_check(torch.device("cuda"), backend="varlen")


def inference(workdir: Path) -> dict[str, Any]:
    result = inference_check(torch.device("cuda"))
    result["passed"] = all(r["users_per_s"] > 0 for r in result["rows"])
    return result


PARTS: tuple[tuple[str, Callable[[Path], dict[str, Any]]], ...] = (
    ("environment", environment), ("kernel_tests", kernel_tests), ("bench", bench), ("training", training),
    ("inference", inference))


def run(path: Path, *, budget_s: float) -> dict[str, Any]:
    """Run every part (CUDA must be present) and return the report; rewritten at ``path`` after each part."""
    started = time.perf_counter()
    report: dict[str, Any] = {"status": "running", "date": dt.datetime.now(dt.UTC).isoformat(),
                              "command": "make gpu-check", "budget_s": budget_s, "parts": {}}
    for name, part in PARTS:
        elapsed = time.perf_counter() - started
        if elapsed > budget_s:
            report["parts"][name] = {"passed": False, "status": f"not run: time budget {budget_s:.0f}s spent"}
            continue
        part_started = time.perf_counter()
        try:
            result = part(path.parent)
        except Exception as exc:  # a broken part is reported, and the remaining parts still run
            log.exception("gpu-check part %s failed", name)
            result = {"passed": False, "error": f"{type(exc).__name__}: {str(exc).strip()[:500]}"}
        result["seconds"] = round(time.perf_counter() - part_started, 1)
        report["parts"][name] = result
        log.info("gpu-check %s: %s in %.0fs", name, "passed" if result.get("passed") else "FAILED",
                 result["seconds"])
        _write(path, report)
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["status"] = "passed" if all(p.get("passed") for p in report["parts"].values()) else "failed"
    _write(path, report)
    return report


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    path = report_path()
    if not torch.cuda.is_available():
        _write(path, {"status": "not run", "reason": NO_CUDA, "date": dt.datetime.now(dt.UTC).isoformat(),
                      "torch": torch.__version__})
        print(f"{NO_CUDA} (report: {path})")
        return 0
    report = run(path, budget_s=float(os.environ.get("LUM_GPU_CHECK_BUDGET_S", BUDGET_S)))
    for name, part in report["parts"].items():
        print(f"{name:13s} {'passed' if part.get('passed') else 'FAILED'} ({part.get('seconds', '-')} s)")
    print(f"gpu-check {report['status']} in {report['seconds']} s (report: {path})")
    return 0 if report["status"] == "passed" else 1


if __name__ == "__main__":
    raise SystemExit(main())
