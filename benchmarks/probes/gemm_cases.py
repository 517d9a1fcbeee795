"""Shared pieces of the GEMM probes (``w4a16_*.py``, ``w8a8_ws.py``): the Wan shapes, seeded problems,
the timer and the output file. (The probes run as scripts, so their folder is on ``sys.path``.)"""

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


def bench(fn) -> float:
    """Median milliseconds of ``fn()`` (``triton.testing.do_bench``)."""
    import triton

    return float(triton.testing.do_bench(fn, warmup=10, rep=80, return_mode="median"))


def write(out: Path, rows: list, **extra) -> None:
    """rows (and extra keys) as JSON with the device name."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": torch.cuda.get_device_name(0), **extra, "rows": rows}, indent=1))
