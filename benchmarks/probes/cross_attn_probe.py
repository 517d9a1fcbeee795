"""Probe: our low-precision attention at cross-attention shapes (32,760 queries x 512 or 769 keys x 40
heads: T2V's text context, I2V's CLIP + text) against bf16 SDPA, H100 / H200.

    PYTHONPATH=. python benchmarks/probes/cross_attn_probe.py $OUT/cross_attention_lowp.json

Per key length: SDPA; the Gluon kernel alone on quantized inputs (2 and 3 consumer warpgroups); the whole
``lowp_attention`` (quantization included, the dispatch's choice of kernel); the quantization alone; and
each output's relative error against SDPA.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F


def main(argv: list[str]) -> int:
    if not torch.cuda.is_available() or len(argv) != 1:
        print("usage (CUDA GPU): cross_attn_probe.py OUT.json", file=sys.stderr)
        return 2
    import triton

    from lightx2v_quant.attention import lowp_gluon, lowp_quant, lowp_triton

    def rel(x, ref):
        return ((x.float() - ref.float()).norm() / ref.float().norm()).item()

    def bench(fn):
        return triton.testing.do_bench(fn, warmup=10, rep=200)

    out = {"device": torch.cuda.get_device_name()}
    for lk in (512, 257 + 512):
        g = torch.Generator("cuda").manual_seed(0)
        q, k, v = (torch.randn(1, n, 40, 128, device="cuda", dtype=torch.bfloat16, generator=g) for n in (32760, lk, lk))
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
        ref = F.scaled_dot_product_attention(qt, kt, vt).transpose(1, 2)
        r = {"sdpa": bench(lambda: F.scaled_dot_product_attention(qt, kt, vt))}
        sm_scale = 128**-0.5 * lowp_triton.LOG2E
        qq = lowp_quant.quantize_qkv(q, k, v, sm_scale=sm_scale, pv_fp8=True, key_order=True)
        for ng in (2, 3):
            r[f"gluon wg{ng} err"] = rel(lowp_gluon.launch(qq, 32760, lk, 40, torch.bfloat16, num_wg=ng), ref)
            r[f"gluon wg{ng}"] = bench(lambda ng=ng: lowp_gluon.launch(qq, 32760, lk, 40, torch.bfloat16, num_wg=ng))
        r["lowp_attention (with quant) err"] = rel(lowp_triton.lowp_attention(q, k, v), ref)
        r["lowp_attention (with quant)"] = bench(lambda: lowp_triton.lowp_attention(q, k, v))
        r["quantize q/k/v"] = bench(lambda: lowp_quant.quantize_qkv(q, k, v, sm_scale=sm_scale, pv_fp8=True))
        out[str(lk)] = r
        print(lk, json.dumps(r), flush=True)
    with open(argv[0], "w") as f:
        json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
