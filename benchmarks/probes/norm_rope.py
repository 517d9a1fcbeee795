"""Probe: the q / k RMSNorm (+ RoPE) kernels of the DIT's fast path at Wan-14B 480p (1 x 32760 x 5120
bf16, 40 heads x 128), each as the DIT calls it, per warp count.

    PYTHONPATH=. python benchmarks/probes/norm_rope.py --out $OUT/norm_rope.json

- ``k``: ``fused.rms_norm_rope_`` in place (norm + RoPE; reads and writes k);
- ``cross_q``: the same without RoPE (the cross-attention's q norm);
- ``q_quant``: ``fused.rms_norm_rope_quant`` (norm + RoPE + int8 per (token, head) for our attention;
  reads q, writes int8 [40, LP, 128] and fp32 scales [40, LP]).
ms (``triton.testing.do_bench``) and effective TB/s of the bytes each must move, for the warp count the
module picks and for others (``rope._warps`` patched).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    import triton

    from lightx2v_quant import fused
    from lightx2v_quant.fused import rope
    from lightx2v_quant.models.wan.rope import rope_tables

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    heads, hd, grid = 40, 128, (21, 30, 52)
    L, D = grid[0] * grid[1] * grid[2], heads * hd
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(1, L, D, device="cuda", generator=g).to(torch.bfloat16)
    w = (1 + 0.1 * torch.randn(D, device="cuda", generator=g)).to(torch.bfloat16)
    cos, sin = rope_tables(grid, hd, "cuda", torch.float32)
    sm = hd**-0.5 * 1.4426950408889634
    nb = L * D * 2
    cases = {
        "k": (2 * nb, lambda: fused.rms_norm_rope_(x, w, cos, sin, heads, 1e-6)),
        "cross_q": (2 * nb, lambda: fused.rms_norm_rope_(x, w, None, None, heads, 1e-6)),
        "q_quant": (nb + L * D + 4 * heads * L, lambda: fused.rms_norm_rope_quant(x, w, cos, sin, heads, 1e-6, sm)),
    }
    default = rope._warps
    res: dict = {"device": torch.cuda.get_device_name(), "shape": [1, L, heads, hd], "default_warps": default(heads, hd)}
    for warps in (None, 2, 4, 16):
        rope._warps = default if warps is None else (lambda h, d, w_=warps: w_)
        tag = "default" if warps is None else f"w{warps}"
        for name, (nbytes, fn) in cases.items():
            t = float(triton.testing.do_bench(fn, warmup=10, rep=100))
            res[f"{name}_{tag}_ms"] = t
            res[f"{name}_{tag}_TBps"] = nbytes / t / 1e9
            print(f"{name:<8} {tag:<8} {t:7.4f} ms {nbytes / t / 1e9:5.2f} TB/s", flush=True)
    rope._warps = default
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
