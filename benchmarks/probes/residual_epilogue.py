"""Probe: the residual add in the Gluon GEMM's epilogue against the GEMM plus a separate add (H100).

    PYTHONPATH=. python benchmarks/probes/residual_epilogue.py --out $OUT/residual_epilogue.json

At the DIT's output projections for one 16,384-token chunk of a 480p Wan-14B stream (bf16): the attention
output projection (K = 5120) and the FFN down projection (K = 13,824), int8 and fp8, gated. Per case: ms
of ``w8a8_matmul`` + ``fused.gated_residual_`` and of ``w8a8_matmul_add_`` (the tuned tile; the epilogue
runs when it is a Gluon tile, which the JSON says), ``triton.testing.do_bench`` medians, and whether the
two give the same bits.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

CASES = {"attn-o": (16384, 5120, 5120), "ffn-down": (16384, 5120, 13824)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    import triton

    from lightx2v_quant.fused import gated_residual_
    from lightx2v_quant.quant.kernels import triton_ops as T
    from lightx2v_quant.quant.kernels.triton_tuning import TUNER, W8A8

    rows = []
    for name, (m, n, k) in CASES.items():
        for fmt in ("w8a8-int8-channel", "w8a8-fp8-channel"):
            g = torch.Generator("cuda").manual_seed(0)
            x = torch.randn(m, k, device="cuda", generator=g, dtype=torch.bfloat16)
            w16 = torch.randn(n, k, device="cuda", generator=g, dtype=torch.bfloat16) * 0.02
            q, sa = T.quantize_per_token(x, fmt)
            w, sb = T.quantize_per_token(w16, fmt)
            bias = torch.randn(n, device="cuda", generator=g, dtype=torch.bfloat16)
            gate = torch.randn(n, device="cuda", generator=g)
            stream = torch.randn(m, n, device="cuda", generator=g, dtype=torch.bfloat16)

            def separate(r):
                y = T.w8a8_matmul(q, sa, w, sb, bias, torch.bfloat16)
                gated_residual_(r[None], y[None], gate.view(1, 1, n))

            def fused(r):
                T.w8a8_matmul_add_(q, sa, w, sb, bias, r, gate)

            want, got = stream.clone(), stream.clone()
            separate(want)  # tunes the GEMM
            fused(got)
            sm = T.device_info(x.device)[0]
            key, _ = T._w8a8_key(W8A8, q, w, got, sm, False)
            cfg = TUNER.best.get(key)
            r = stream.clone()
            row = {
                "case": name,
                "format": fmt,
                "m": m,
                "n": n,
                "k": k,
                "tile": cfg.label() if cfg else None,
                "epilogue": bool(cfg and cfg.gluon),
                "same_bits": bool(torch.equal(got.view(torch.int16), want.view(torch.int16))),
                "gemm_only_ms": triton.testing.do_bench(lambda: T.w8a8_matmul(q, sa, w, sb, bias, torch.bfloat16),
                                                        warmup=10, rep=200),
                "gemm_plus_add_ms": triton.testing.do_bench(lambda: separate(r), warmup=10, rep=200),
                "gemm_add_epilogue_ms": triton.testing.do_bench(lambda: fused(r), warmup=10, rep=200),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
