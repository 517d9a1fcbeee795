"""Accuracy cases for the low-precision attention kernel; run by the tests in Triton's interpreter
(CPU, a subprocess with TRITON_INTERPRET=1) and directly on CUDA."""

from __future__ import annotations

import json
import sys

import torch


def snr_db(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float(20 * torch.log10(ref.norm() / (out.float() - ref).norm()))


def cases(device: str, dtype: torch.dtype, shapes) -> dict[str, float]:
    from lightx2v_quant.attention.lowp_triton import lowp_attention

    results = {}
    gen = torch.Generator().manual_seed(0)
    for b, lq, lk, h, d in shapes:
        q = torch.randn(b, lq, h, d, generator=gen)
        k = torch.randn(b, lk, h, d, generator=gen) + 2.0 * torch.randn(d, generator=gen)  # channel offsets
        v = torch.randn(b, lk, h, d, generator=gen) + torch.randn(d, generator=gen)
        ref = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2).double(), k.transpose(1, 2).double(), v.transpose(1, 2).double()
        ).transpose(1, 2)
        args = [t.to(device=device, dtype=dtype) for t in (q, k, v)]
        for pv_fp8 in (True, False):
            out = lowp_attention(*args, pv_fp8=pv_fp8)
            assert out.shape == q.shape and out.dtype == dtype
            key = f"{b}x{lq}x{lk}x{h}x{d}-{'fp8pv' if pv_fp8 else 'int8qk'}"
            results[key] = snr_db(out.cpu().double(), ref)
    return results


if __name__ == "__main__":
    # interpreter: fp16 (the interpreter's dot has no bf16), small shapes incl. ragged lengths
    shapes = [(1, 200, 200, 2, 64), (2, 130, 70, 1, 128)]
    print(json.dumps(cases("cpu", torch.float16, shapes)))
    sys.stdout.flush()
