"""Probe: the Gluon ping-pong attention kernel (lowp_gluon) against the Triton kernel (lowp_triton)
and SDPA, on the same quantized inputs.

    PYTHONPATH=. python benchmarks/probes/attn_gluon_probe.py --out $OUT/attn_gluon_probe.json

Per shape: relative error of each Gluon variant against the Triton kernel's output (same numerics:
should be ~0) and against bf16 SDPA; at the Wan-14B shapes also ms and TOPS (triton.testing.do_bench,
quantization excluded for both kernels). Variants: ``pingpong`` (the two warpgroups take turns on the
tensor cores) and ``lockstep`` (same kernel without the turn barriers).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import torch
import torch.nn.functional as F


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--variants", nargs="*", default=["pingpong", "lockstep"])
    p.add_argument("--stages", type=int, nargs="*", default=[5])
    p.add_argument("--warpgroups", type=int, nargs="*", default=[2, 3], help="consumer warpgroups per program")
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    import triton

    from lightx2v_quant.attention import lowp_gluon, lowp_quant, lowp_triton

    os.environ["LIGHTX2V_QUANT_ATTN_KERNEL"] = "triton"  # the baseline: lowp_triton's own (autotuned) kernel

    def rel(x, y):
        return ((x.float() - y.float()).norm() / y.float().norm()).item()

    rows = []
    shapes = [(300, 200, 2, False), (1000, 512, 4, False), (129, 1, 1, False), (32760, 512, 40, True),
              (32760, 32760, 40, True)]
    for lq, lk, heads, timed in shapes:
        torch.manual_seed(0)
        q, k, v = (torch.randn(1, n, heads, 128, device="cuda", dtype=torch.bfloat16) for n in (lq, lk, lk))
        ref = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
        # V^T's keys in the Gluon kernel's order; the Triton kernel (128-key blocks) reads it too
        qq = lowp_quant.quantize_qkv(q, k, v, sm_scale=128**-0.5 * lowp_triton.LOG2E, pv_fp8=True, key_order=True)
        tri = lowp_triton._launch(qq, None, lq, lk, heads, torch.bfloat16)
        flops = 4 * lq * lk * 128 * heads
        row = {"lq": lq, "lk": lk, "heads": heads, "triton_err_vs_sdpa": rel(tri, ref)}
        if timed:
            row["sdpa_ms"] = triton.testing.do_bench(
                lambda: F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)),
                warmup=5, rep=200)
            row["triton_ms"] = triton.testing.do_bench(
                lambda: lowp_triton._launch(qq, None, lq, lk, heads, torch.bfloat16), warmup=5, rep=200)
            row["triton_TOPS"] = flops / row["triton_ms"] / 1e9
        for variant, stages, nwg in itertools.product(a.variants, a.stages, a.warpgroups):
            name = f"{variant} s{stages} wg{nwg}"
            pp = variant == "pingpong"
            print(f"  {lq}x{lk}x{heads} {name}", flush=True)
            try:
                out = lowp_gluon.launch(qq, lq, lk, heads, torch.bfloat16, pingpong=pp, stages=stages, num_wg=nwg)
                torch.cuda.synchronize()
                row[name + " err_vs_triton"] = rel(out, tri)
                row[name + " max_abs_vs_triton"] = (out.float() - tri.float()).abs().max().item()
                row[name + " err_vs_sdpa"] = rel(out, ref)
                if timed:
                    row[name + " ms"] = triton.testing.do_bench(
                        lambda: lowp_gluon.launch(qq, lq, lk, heads, torch.bfloat16, pingpong=pp, stages=stages, num_wg=nwg),
                        warmup=5, rep=200)
                    row[name + " TOPS"] = flops / row[name + " ms"] / 1e9
            except Exception as exc:  # report what does not build or run
                row[name + " error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
        rows.append(row)
        print(json.dumps(row), flush=True)
    with open(a.out, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
