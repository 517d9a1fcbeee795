"""Shared pieces of the GEMM probes (``w4a16_*.py``, ``w8a8_ws.py``, ``gluon_gemm_probe.py``,
``gemm_power.py``): the Wan shapes, seeded problems, a Gluon W8A8 launch of a chosen tile, the timer and
the output file. (The probes run as scripts, so their folder is on ``sys.path``.)"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# (M tokens, N out features, K in features)
SHAPES = {
    "qkvo": (32760, 5120, 5120),
    "ffn-up": (32760, 13824, 5120),
    "ffn-down": (32760, 5120, 13824),
    "qkvo-chunk": (16896, 5120, 5120),  # the DIT's token chunks on an H100 (speed.token_chunk)
    "t5:ffn-up": (512, 10240, 4096),
    "t5:ffn-down": (512, 4096, 10240),
    "1.3b:qkvo": (32760, 1536, 1536),
    "small": (1000, 640, 1024),  # a quick first launch (a hang costs seconds, not the whole run)
}


def problem(fmt_name: str, m: int, n: int, k: int, seed: int = 0):
    """Seeded bf16 activations x [M, K] on the GPU, the format's checkpoint tensors of a random [N, K]
    weight (quantized on the CPU, moved to the GPU) and that weight dequantized and rounded to bf16."""
    from lightx2v_quant.quant import formats as qf

    fmt = qf.get_format(fmt_name)
    torch.manual_seed(seed)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    tensors = {key: v.cuda() for key, v in fmt.checkpoint_tensors(torch.randn(n, k) * 0.02).items()}
    return x, tensors, fmt.dequantize_weight(tensors).to(torch.bfloat16)


def gluon_w8a8(q, sa, wq, sb, bias, tile: tuple[int, int, int, int, int], instr: int, group_m: int = 8,
               per_sm: int = 1):
    """(launch, out): ``gluon_gemm.w8a8_gluon_kernel`` on pre-quantized operands (per-token ``sa``, per-channel
    ``sb``, both flat fp32) with tile (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) and wgmma width ``instr``
    (which the tuner's configs do not choose), ``per_sm`` programs per SM; ``launch()`` writes ``out``."""
    import triton

    from lightx2v_quant.quant.kernels import gluon_gemm
    from lightx2v_quant.quant.kernels.triton_launch import run_kernel

    bm, bn, bk, warps, stages = tile
    (m, k), n = q.shape, wq.shape[0]
    out = torch.empty(m, n, device=q.device, dtype=torch.bfloat16)
    args = (*gluon_gemm.descriptors(q, wq, out, bm, bn, bk), sa, sb, bias, m, n, k)
    meta = dict(
        GROUP_M=group_m, STAGES=stages, INSTR_N=instr, HAS_BIAS=True, IS_INT8=q.dtype == torch.int8, num_warps=warps
    )
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count
    grid = (min(per_sm * sms, triton.cdiv(m, bm) * triton.cdiv(n, bn)),)
    return (lambda: run_kernel(gluon_gemm.w8a8_gluon_kernel, grid, args, meta, False)), out


def bench(fn) -> float:
    """Median milliseconds of ``fn()`` (``triton.testing.do_bench``)."""
    import triton

    return float(triton.testing.do_bench(fn, warmup=10, rep=80, return_mode="median"))


def write(out: Path, rows: list, **extra) -> None:
    """rows (and extra keys) as JSON with the device name."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": torch.cuda.get_device_name(0), **extra, "rows": rows}, indent=1))
