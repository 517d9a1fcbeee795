"""Probe: launch the low-precision attention kernel once per pinned config at Wan-14B's 480p
self-attention shape (32,760 tokens x 40 heads x 128), for a profiler (Nsight Compute) to look at.

    ncu -k regex:_attn_fwd --section WarpStateStats ... python benchmarks/probes/attn_once.py 64,128,4,2,168

Each argument is ``BLOCK_M,BLOCK_N,warps,stages,maxnreg`` (lowp_triton.CONFIGS); prints ms per launch
from CUDA events (an un-profiled second launch).
"""

from __future__ import annotations

import sys

import torch

from lightx2v_quant.attention import lowp_triton


def main() -> int:
    configs = [tuple(int(v) for v in a.split(",")) for a in sys.argv[1:]] or [lowp_triton.CONFIGS[0]]
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 32760, 40, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    for cfg in configs:
        lowp_triton.lowp_attention_config(q, k, v, True, cfg)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        lowp_triton.lowp_attention_config(q, k, v, True, cfg)
        end.record()
        torch.cuda.synchronize()
        print(f"{cfg}: {start.elapsed_time(end):.2f} ms (quantization included)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
