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

SHAPES = {
    "qkvo": (32760, 5120, 5120),
    "ffn-up": (32760, 13824, 5120),
    "ffn-down": (32760, 5120, 13824),
    "t5:ffn-up": (512, 10240, 4096),
    "t5:ffn-down": (512, 4096, 10240),
    "1.3b:qkvo": (32760, 1536, 1536),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES))
    parser.add_argument("--gluon", nargs="*", default=None, help="TOKENSxSTAGES Gluon tiles (default: the tuner's)")
    parser.add_argument("--tl", action="store_true", help="also time every tl tile (default: the first three)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    import triton

    from lightx2v_quant.quant import formats as qf
    from lightx2v_quant.quant.kernels import triton_ops, triton_tuning as tt

    def bench(fn) -> float:
        return float(triton.testing.do_bench(fn, warmup=10, rep=80, return_mode="median"))

    fmt = qf.get_format("w4a16-int4-g128")
    sm, _, smem = triton_ops.device_info(torch.device("cuda"))
    rows = []
    for name in args.shapes:
        m, n, k = SHAPES[name]
        torch.manual_seed(0)
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        t = {key: v.cuda() for key, v in fmt.checkpoint_tensors(torch.randn(n, k) * 0.02).items()}
        w = fmt.dequantize_weight(t).to(torch.bfloat16)
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(0), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
