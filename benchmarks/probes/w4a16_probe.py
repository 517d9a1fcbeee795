"""W4A16 (int4-g128) kernels at Wan shapes: the Gluon kernel's tiles against the tl kernel and bf16.

    PYTHONPATH=. python benchmarks/probes/w4a16_probe.py --out $OUT/w4a16_probe.json

For each shape: bf16 ``F.linear`` on the dequantized weight, the tl kernel's tiles (``triton_tuning``'s
W4A16 candidates without the Gluon ones) and each Gluon tile, timed with ``triton.testing.do_bench``
(median) in the same process; each output is checked against the format's reference (relative error).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from gemm_cases import SHAPES, bench, problem, write

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shapes", nargs="*", default=["qkvo", "ffn-up", "ffn-down", "t5:ffn-up", "t5:ffn-down", "1.3b:qkvo"])
    parser.add_argument("--gluon", nargs="*", default=None, help="TOKENSxSTAGES Gluon tiles (default: the tuner's)")
    parser.add_argument("--tl", action="store_true", help="also time every tl tile (default: the first three)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    from lightx2v_quant.quant.kernels import triton_ops, triton_tuning as tt

    sm, _, smem = triton_ops.device_info(torch.device("cuda"))
    rows = []
    for name in args.shapes:
        m, n, k = SHAPES[name]
        x, t, w = problem("w4a16-int4-g128", m, n, k)
        ref = F.linear(x, w).float()
        row = {"shape": name, "m": m, "n": n, "k": k, "bf16_ms": bench(lambda: F.linear(x, w))}
        cands = tt.candidates(tt.W4A16, m, sm, smem, 2, 2)
        tl_cands = [c for c in cands if not c.gluon]
        if not args.tl:
            tl_cands = tl_cands[:3]
        if args.gluon is None:
            g_cands = [c for c in cands if c.gluon]
        else:
            g_cands = [
                tt.TileConfig(int(bt), 128, 64, 4, int(s), tma=True, gluon=True)
                for bt, s in (e.split("x") for e in args.gluon)
            ]
        for kind, group in (("tl", tl_cands), ("gluon", g_cands)):
            for cfg in group:
                label = f"{kind} {cfg.label()}"
                print(name, label, file=sys.stderr, flush=True)
                try:
                    y = triton_ops.w4a16_matmul(x, t["weight"], t["weight_scale"], config=cfg)
                    torch.cuda.synchronize()
                    err = float((y.float() - ref).norm() / ref.norm())
                    diff = int((y.float() != ref).sum())
                    ms = bench(lambda: triton_ops.w4a16_matmul(x, t["weight"], t["weight_scale"], config=cfg))
                except Exception as exc:  # noqa: BLE001 - a probe: record and go on
                    row[label] = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
                    continue
                row[label] = {"ms": ms, "x_bf16": row["bf16_ms"] / ms, "rel_err": err, "elements_differing": diff}
        print(json.dumps(row), flush=True)
        rows.append(row)
    write(args.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
