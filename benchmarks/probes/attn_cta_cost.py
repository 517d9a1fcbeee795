"""Probe: the Gluon attention kernel's fixed cost per program (CTA), from how its time grows with keys.

    PYTHONPATH=. python benchmarks/probes/attn_cta_cost.py --out $OUT/attn_cta_cost.json

At Wan-14B's 480p query side (32,760 tokens x 40 heads: 171 x 40 programs, ~52 waves on 132 SMs) the
kernel is timed (``triton.testing.do_bench``, quantization excluded) with 512 to 32k keys. A least-squares
line t = a + b * keys splits the time into a part per key block and a fixed part ``a`` (start-up: Q and
the first K / V^T loads, the pipeline fill; drain: the last wgmmas, O's normalization and store; CTA
launch): what a persistent grid that overlaps one tile's drain with the next one's start could save at
most, as a share of the 32,760-key time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    import triton

    from lightx2v_quant.attention import lowp_gluon, lowp_quant, lowp_triton

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    lq, heads, d = 32760, 40, 128
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, lq, heads, d, device="cuda", generator=g, dtype=torch.bfloat16)
    res: dict = {"device": torch.cuda.get_device_name(), "lq": lq, "heads": heads, "ms": {}}
    for lk in (512, 1024, 2048, 4096, 8192, 16384, 32760):
        k = torch.randn(1, lk, heads, d, device="cuda", generator=g, dtype=torch.bfloat16)
        v = torch.randn(1, lk, heads, d, device="cuda", generator=g, dtype=torch.bfloat16)
        qq = lowp_quant.quantize_qkv(q, k, v, d**-0.5 * lowp_triton.LOG2E, pv_fp8=True, key_order=True)
        def run(qq=qq, lk=lk):
            return lowp_gluon.launch(qq, lq, lk, heads, q.dtype)

        t = float(triton.testing.do_bench(run, warmup=5, rep=200))
        res["ms"][lk] = t
        print(f"keys {lk:6d}: {t:8.4f} ms", flush=True)
    xs = torch.tensor([float(x) for x in res["ms"]], dtype=torch.float64)
    ys = torch.tensor(list(res["ms"].values()), dtype=torch.float64)
    A = torch.stack([torch.ones_like(xs), xs], 1)
    fixed, per_key = torch.linalg.lstsq(A, ys[:, None]).solution[:, 0].tolist()
    tiles = -(-lq // (lowp_gluon.WG_ROWS * lowp_gluon.NUM_WG)) * heads
    waves = tiles / torch.cuda.get_device_properties(0).multi_processor_count
    res.update(
        fixed_ms=fixed,
        ms_per_1k_keys=per_key * 1024,
        waves=waves,
        fixed_us_per_wave=fixed * 1e3 / waves,
        fixed_share_at_32760=fixed / res["ms"][32760],
        fit_max_rel_residual=float(((A[:, 0] * fixed + A[:, 1] * per_key - ys).abs() / ys).max()),
    )
    print({k: v for k, v in res.items() if k != "ms"}, flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
