"""Probe: launch a low-precision attention kernel at Wan-14B's 480p self-attention shape (32,760 tokens
x 40 heads x 128) on quantized random inputs, for a profiler (Nsight Compute, ``attn_ncu.sh``) to look at.

    python benchmarks/probes/attn_once.py triton 64,128,4,2,168   # lowp_triton, one pinned config
    python benchmarks/probes/attn_once.py gluon 3                 # lowp_gluon, 3 consumer warpgroups

Each kernel runs twice (the profiler skips the first, compiling launch); prints ms of the second from
CUDA events (quantization excluded).
"""

from __future__ import annotations

import sys

import torch

from lightx2v_quant.attention import lowp_gluon, lowp_quant, lowp_triton


def main() -> int:
    which = sys.argv[1] if len(sys.argv) > 1 else "triton"
    arg = sys.argv[2] if len(sys.argv) > 2 else ""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 32760, 40, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    # the Gluon kernel reads V^T with its keys in key_order
    qq = lowp_quant.quantize_qkv(q, k, v, sm_scale=128**-0.5 * lowp_triton.LOG2E, pv_fp8=True, key_order=which == "gluon")
    if which == "gluon":
        num_wg = int(arg or lowp_gluon.NUM_WG)
        run = lambda: lowp_gluon.launch(qq, 32760, 32760, 40, torch.bfloat16, num_wg=num_wg)
    else:
        cfg = tuple(int(x) for x in arg.split(",")) if arg else lowp_triton.CONFIGS[0]
        run = lambda: lowp_triton._launch(qq, None, 32760, 32760, 40, torch.bfloat16, cfg)
    run()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run()
    end.record()
    torch.cuda.synchronize()
    print(f"{which} {arg}: {start.elapsed_time(end):.2f} ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
