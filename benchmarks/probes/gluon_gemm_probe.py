"""Gluon W8A8 kernel variants against the tl TMA kernel at the 14B DIT shapes (H100 / H200 probe).

    PYTHONPATH=. python benchmarks/probes/gluon_gemm_probe.py --out $OUT/gluon_gemm_probe.json

Times the GEMM alone (quantized inputs prepared once) with ``triton.testing.do_bench`` for each tile,
ring depth and wgmma instruction width, next to bf16 ``F.linear`` and the tl kernel's best tile, and
checks each variant's output against the tl kernel's bits.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from gemm_cases import gluon_w8a8

SHAPES = {"qkvo": (32760, 5120, 5120), "ffn-up": (32760, 13824, 5120), "ffn-down": (32760, 5120, 13824)}
# the DIT's token chunks (speed.token_chunk: 128 tokens per SM on an H100)
SHAPES.update({f"{k}-chunk": (16896, n, kk) for k, (_, n, kk) in SHAPES.items()})
# (BLOCK_M, BLOCK_N, BLOCK_K, warps, ring depth, programs per SM): two programs per SM (tiles whose ring and
# staging buffer fit twice in shared memory) let one program's epilogue overlap the other's wgmmas.
TILES = [
    (128, 256, 128, 8, 4, 1),
    (256, 128, 128, 8, 4, 1),
    (128, 256, 128, 8, 3, 1),
    (256, 128, 128, 8, 3, 1),
    (128, 128, 128, 8, 3, 2),
    (128, 128, 128, 4, 3, 2),
    (128, 128, 64, 8, 5, 2),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES))
    parser.add_argument("--formats", nargs="*", default=["w8a8-fp8-channel", "w8a8-int8-channel"])
    parser.add_argument("--group-m", nargs="*", type=int, default=[8], help="grouped tile orders to try (rows of tiles per group)")
    parser.add_argument("--tiles", nargs="*", default=None, help="BMxBNxBKxWARPSxSTAGESxPER_SM entries instead of TILES")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    import triton

    from lightx2v_quant.quant.kernels import gluon_gemm, triton_ops
    from lightx2v_quant.quant.kernels.triton_tuning import TileConfig

    def bench(fn) -> float:
        return float(triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median"))

    rows = []
    for name in args.shapes:
        m, n, k = SHAPES[name]
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        w16 = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
        bf16_ms = bench(lambda: F.linear(x, w16, bias))
        for fmt in args.formats:
            q, sa = triton_ops.quantize_per_token(x, fmt)
            wq, sb = triton_ops.quantize_per_token(w16, fmt)
            sa, sb = sa.reshape(-1).contiguous(), sb.reshape(-1).contiguous()
            is_int8 = q.dtype == torch.int8
            tl_cfg = TileConfig(128, 256, 128, 8, 4, tma=True, subtile=True)
            want = triton_ops.w8a8_matmul(q, sa, wq, sb, bias, config=tl_cfg)
            row = {"shape": name, "format": fmt, "bf16_ms": bf16_ms}
            row["tl 128x256x128 s4/sub"] = bench(
                lambda: triton_ops.w8a8_matmul(q, sa, wq, sb, bias, config=tl_cfg)
            )
            tiles = [tuple(int(v) for v in t.split("x")) for t in args.tiles] if args.tiles else TILES
            for (bm, bn, bk, warps, stages, per_sm), group_m in ((t, g) for t in tiles for g in args.group_m):
                for instr in sorted({128, gluon_gemm.instr_n(bn, is_int8)}):
                    label = f"gluon {bm}x{bn}x{bk} w{warps} s{stages} n{instr}" + (f" x{per_sm}/SM" if per_sm > 1 else "")
                    label += f" g{group_m}" if group_m != 8 else ""
                    try:
                        launch, out = gluon_w8a8(q, sa, wq, sb, bias, (bm, bn, bk, warps, stages), instr, group_m, per_sm)
                        launch()
                        row[label + " same_bits"] = bool(torch.equal(out, want))
                        row[label] = bench(launch)
                    except Exception as exc:  # a variant that does not build here
                        row[label + " error"] = str(exc).splitlines()[0][:200]
            rows.append(row)
            best = sorted((v, key) for key, v in row.items() if isinstance(v, float) and key != "bf16_ms")
            print(
                name,
                fmt,
                "bf16 %.4f" % bf16_ms,
                " | ".join("%s %.4f (%.2fx)" % (kk, v, bf16_ms / v) for v, kk in best[:5]),
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
