"""Probe: is the fp8 W8A8 GEMM slower than int8 in the same Gluon kernel because of the power cap?

    PYTHONPATH=. python benchmarks/probes/gemm_power.py --out $OUT/gemm_power.json [--seconds 3]

At the 14B DIT shapes, the GEMM alone (inputs quantized once) for bf16 ``F.linear`` and the Gluon W8A8
kernel on fp8 and int8 operands of the same tile (and fp8 with the int8 kernel's 128-wide wgmmas), each
timed short (``do_bench``) and sustained for ``--seconds`` with the SM clock and board power sampled
(``attn_variants.Sampler``), in interleaved rounds. Equal clocks with fp8 slower would point at the
kernel; a lower fp8 clock at the same 700 W at the energy of the fp8 tensor-core work.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from attn_variants import Sampler
from gemm_cases import SHAPES, gluon_w8a8, write


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--shapes", nargs="*", default=["qkvo", "ffn-up", "ffn-down"])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--tile", default="128x256x128x8x4", help="BMxBNxBKxWARPSxSTAGES")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    import triton

    from lightx2v_quant.quant.kernels import gluon_gemm, triton_ops

    tile = tuple(int(v) for v in a.tile.split("x"))
    sampler = Sampler()
    rows = []
    for shape in a.shapes:
        m, n, k = SHAPES[shape]
        torch.manual_seed(0)
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        w16 = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
        fns = {"bf16 F.linear": lambda: F.linear(x, w16, bias)}
        for fmt, label in (("w8a8-fp8-channel", "fp8"), ("w8a8-int8-channel", "int8")):
            q, sa = triton_ops.quantize_per_token(x, fmt)
            wq, sb = triton_ops.quantize_per_token(w16, fmt)
            sa, sb = sa.reshape(-1).contiguous(), sb.reshape(-1).contiguous()
            for instr in sorted({128, gluon_gemm.instr_n(tile[1], q.dtype == torch.int8)}):
                fns[f"{label} n{instr}"] = gluon_w8a8(q, sa, wq, sb, bias, tile, instr)[0]
        flops = 2.0 * m * n * k
        for name, fn in fns.items():
            fn()
            torch.cuda.synchronize()
            ms = float(triton.testing.do_bench(fn, warmup=10, rep=80, return_mode="median"))
            rows.append({"shape": shape, "kernel": name, "mode": "short", "ms": ms, "tflops": flops / ms / 1e9})
            print(rows[-1], flush=True)
        for r in range(a.rounds):
            for name, fn in fns.items():
                run = sampler.sustained(fn, a.seconds)
                ms = run["sustained_ms"]
                rows.append(
                    {"shape": shape, "kernel": name, "mode": f"sustained {r}", "ms": ms,
                     "tflops": flops / ms / 1e9, "sm_mhz": run["sm_mhz"], "watts": run["watts"]}
                )  # fmt: skip
                print(rows[-1], flush=True)
    sampler.stop()
    write(a.out, rows, tile=a.tile, seconds=a.seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
