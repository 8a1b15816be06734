"""Compile the Triton kernels for a CUDA target without a GPU (ahead-of-time, through ptxas).

The interpreter (TRITON_INTERPRET=1) checks numerics but is lenient about what the GPU compiler rejects
(early returns, dot shapes, shared memory). This lowers every kernel to a cubin for ``--arch`` (default
sm_90, H100) and prints each variant's shared memory, so a CPU-only machine still proves that the GPU
path compiles. Run in a process WITHOUT TRITON_INTERPRET: ``python -m kernels.compile_check``.
~10-30 s per variant on a busy 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from kernels.tiles import TILE

PTR_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


def _signature(fn, dtype: str, constexprs: dict) -> tuple[dict, dict]:
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in ("LSE", "DELTA"):
            sig[name] = "*fp32"
        elif name in ("CU", "PREFIX", "TILES"):
            sig[name] = "*i32"
        elif name in ("qk_scale", "sm_scale"):
            sig[name] = "fp32"
        elif name.startswith("stride") or name.endswith("_BUCKET"):
            sig[name] = "i32"
        else:
            sig[name] = "*" + dtype
    return sig, {(fn.arg_names.index(k),): v for k, v in constexprs.items()}


def compile_variants(arch: int = 90, dtypes: tuple[str, ...] = ("bfloat16",),
                     head_dims: tuple[int, ...] = (64, 80)) -> list[dict]:
    """Compile the forward's history tiles (BLOCK_M/BLOCK_N 128/64 and 64/32) and condition tiles (16/64 and
    64/128) and both backward kernels; raise on failure."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise ValueError("TRITON_INTERPRET=1 is set: unset it to compile for a GPU target")
    import triton  # deferred: TRITON_INTERPRET is checked before triton loads
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    # deferred: the Triton kernel modules import triton (loaded above, after the interpreter check)
    from kernels import triton_backward as tb
    from kernels import triton_forward as tf

    target = GPUTarget("cuda", arch, 32)
    results = []
    for dtype in dtypes:
        short = PTR_DTYPES[dtype]
        prec = "ieee" if dtype == "float32" else "tf32"
        for head_dim in head_dims:
            block_d = max(16, triton.next_power_of_2(head_dim))
            common = {"HEAD_DIM": head_dim, "BLOCK_D": block_d, "GROUP": 2, "TILE_ROWS": TILE,
                      "PREC": prec, "UPCAST": False}
            variants = [(tf._fwd_kernel, dict(common, STORE_LSE=True, QUERY=False, BLOCK_M=bm, BLOCK_N=bn), warps)
                        for bm, bn, warps in ((128, 64, 8), (64, 32, 4))]
            variants += [(tf._fwd_kernel, dict(common, TILE_ROWS=rows, STORE_LSE=False, QUERY=True, BLOCK_M=rows,
                                               BLOCK_N=bn), warps)
                         for rows, bn, warps in ((16, 64, 4), (64, 128, 4))]
            variants += [(fn, dict(common, BLOCK=64), 4) for fn in (tb._bwd_dq_kernel, tb._bwd_dkdv_kernel)]
            for fn, consts, warps in variants:
                sig, const_idx = _signature(fn, short, consts)
                kernel = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const_idx), target=target,
                                        options={"num_warps": warps, "num_stages": 2})
                results.append({"kernel": fn.__name__, "dtype": dtype, "head_dim": head_dim,
                                "block": {k: v for k, v in consts.items() if k.startswith("BLOCK")},
                                "shared_bytes": kernel.metadata.shared})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10 (90 = H100)")
    parser.add_argument("--dtypes", default="bfloat16", help="comma list of bfloat16,float16,float32")
    parser.add_argument("--head-dims", default="64,80", help="comma list of head dims")
    args = parser.parse_args(argv)
    rows = compile_variants(args.arch, tuple(args.dtypes.split(",")),
                            tuple(int(x) for x in args.head_dims.split(",")))
    for row in rows:
        sys.stdout.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
