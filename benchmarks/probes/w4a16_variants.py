"""Variants of the Gluon W4A16 kernel's unpacking step, timed against each other (H100 probe).

    PYTHONPATH=. python benchmarks/probes/w4a16_variants.py --out $OUT/w4a16_variants.json

Each variant replaces ``gluon_w4a16._dequant`` (the JIT resolves it by name when it compiles; one
variant per process, since the kernel's cache key is computed once) and is timed at the 14B DIT shapes
next to bf16 ``F.linear``. ``no-unpack`` feeds a constant operand (wrong
output, a bound: the pipeline and register-operand wgmmas alone); ``loads-only`` converts the loaded
bytes without the scale arithmetic (wrong output, a bound).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from gemm_cases import SHAPES, bench, problem, write

from lightx2v_quant.quant.kernels import gluon_w4a16 as g


if g.AVAILABLE:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl

    @gluon.jit
    def _no_unpack(buf, scale, WG: gl.constexpr, out_dtype: gl.constexpr, op_layout: gl.constexpr):
        ROWS: gl.constexpr = op_layout.parent.warps_per_cta[0] * 16
        BLOCK_K: gl.constexpr = buf.shape[1] * 2
        return gl.full([ROWS, BLOCK_K], 0.25, out_dtype, layout=op_layout)

    @gluon.jit
    def _loads_only(buf, scale, WG: gl.constexpr, out_dtype: gl.constexpr, op_layout: gl.constexpr):
        ROWS: gl.constexpr = op_layout.parent.warps_per_cta[0] * 16
        BLOCK_K: gl.constexpr = buf.shape[1] * 2
        p = buf.slice(WG * ROWS, ROWS, dim=0).load(g._packed_layout(ROWS, BLOCK_K, 4)).to(gl.int32)
        w = gl.reshape(gl.join(p, p >> 4), [ROWS, BLOCK_K]).to(out_dtype)
        return gl.convert_layout(w, op_layout, assert_trivial=True)

    VARIANTS = {"current": g._dequant, "no-unpack": _no_unpack, "loads-only": _loads_only}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shapes", nargs="*", default=["qkvo", "ffn-up", "ffn-down"])
    parser.add_argument("--variant", default="current")
    parser.add_argument("--tiles", nargs="*", default=["256x5"], help="TOKENSxSTAGES")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    from lightx2v_quant.quant.kernels import triton_ops
    from lightx2v_quant.quant.kernels.triton_tuning import TileConfig

    rows = []
    for name in args.shapes:
        x, t, w_bf16 = problem("w4a16-int4-g128", *SHAPES[name])
        ref = F.linear(x, w_bf16)
        row = {"shape": name, "bf16_ms": bench(lambda: F.linear(x, w_bf16))}
        g._dequant = VARIANTS[args.variant]
        for vname in [args.variant]:
            for tile in args.tiles:
                bt, st = (int(v) for v in tile.split("x"))
                cfg = TileConfig(bt, 128, 64, 4, st, tma=True, gluon=True)
                label = f"{vname} {bt}x{st}"
                print(name, label, file=sys.stderr, flush=True)
                y = triton_ops.w4a16_matmul(x, t["weight"], t["weight_scale"], config=cfg)
                exact = bool(torch.equal(y, ref))
                ms = bench(lambda: triton_ops.w4a16_matmul(x, t["weight"], t["weight_scale"], config=cfg))
                row[label] = {"ms": ms, "x_bf16": row["bf16_ms"] / ms, "equals_bf16_linear": exact}
        print(json.dumps(row), flush=True)
        rows.append(row)
    write(args.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
