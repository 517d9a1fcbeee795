"""Cases for the fused norm / residual / RoPE kernels vs their PyTorch references (the official numerics);
run in Triton's interpreter by the tests (a subprocess with TRITON_INTERPRET=1) and directly on CUDA."""

from __future__ import annotations

import json
import sys

import torch

from lightx2v_quant import fused
from lightx2v_quant.models.wan.rope import rope_tables


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def _mismatch(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() != b.float()).double().mean())


def norm_cases(device: str, dtype: torch.dtype, B: int, L: int, D: int, Lt: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(B, L, D, generator=g) * 3 + 1).to(device)  # fp32 residual stream
    mod = (torch.randn(B, Lt, 6, D, generator=g) * 0.5).to(device).unbind(2)  # strided like the DIT's
    shift, scale, gate = mod[0], mod[1], mod[2]
    w = (1 + 0.1 * torch.randn(D, generator=g)).to(dtype).to(device)
    bias = (0.1 * torch.randn(D, generator=g)).to(dtype).to(device)
    y = torch.randn(B, L, D, generator=g).to(dtype).to(device)
    res = {}
    kw = dict(shift=shift, scale=scale)
    for name, args in (("mod", kw), ("affine", dict(weight=w, bias=bias)), ("plain", {})):
        out = fused.layer_norm_modulate(x, 1e-6, dtype, **args)
        ref = fused.layer_norm_modulate_reference(x, 1e-6, dtype, **args)
        res[f"ln_{name}_err"] = _err(out, ref)
        res[f"ln_{name}_mismatch"] = _mismatch(out, ref)  # bf16 ties only
    for quant in ("fp8", "int8"):
        out = fused.layer_norm_modulate(x, 1e-6, dtype, quant=quant, **kw)
        ref = fused.layer_norm_modulate_reference(x, 1e-6, dtype, quant=quant, **kw)
        assert out.dtype == dtype and out.data.dtype == ref.data.dtype and out.scale.shape == (B, L, 1)
        res[f"q{quant}_scale_err"] = _err(out.scale, ref.scale)
        res[f"q{quant}_mismatch"] = _mismatch(out.data, ref.data)
        res[f"q{quant}_deq_err"] = _err(out.dequantize().float(), ref.dequantize().float())
    x16 = x.to(dtype)  # speed.residual=run_dtype: the stream in the run dtype
    for name, xs, g in (("gate", x, gate), ("plain", x, None), ("gate16", x16, gate), ("plain16", x16, None)):
        ref = fused.gated_residual_reference(xs, y, g)
        out = xs.clone()
        assert fused.gated_residual_(out, y, g) is out and out.dtype == xs.dtype
        res[f"res_{name}_err"] = _err(out, ref)
    # a token slice of the stream (the FFN adds chunk by chunk); rows outside it stay untouched
    out = x.clone()
    fused.gated_residual_(out[:, 1:3], y[:, 1:3], gate if gate.shape[1] == 1 else gate[:, 1:3])
    ref = x.clone()
    ref[:, 1:3] = fused.gated_residual_reference(x[:, 1:3], y[:, 1:3], gate if gate.shape[1] == 1 else gate[:, 1:3])
    res["res_slice_err"] = _err(out, ref)
    return res


def rope_cases(
    device: str,
    dtype: torch.dtype,
    B: int,
    grid: tuple[int, int, int],
    heads: int,
    hd: int,
    w_dtype: torch.dtype,
) -> dict[str, float]:
    g = torch.Generator().manual_seed(1)
    L, D = grid[0] * grid[1] * grid[2], heads * hd
    q = (torch.randn(B, L, D, generator=g) * 2).to(dtype).to(device)
    k = (torch.randn(B, L, D, generator=g) + 0.5).to(dtype).to(device)
    wq = (1 + 0.1 * torch.randn(D, generator=g)).to(w_dtype).to(device)
    wk = (1 + 0.1 * torch.randn(D, generator=g)).to(w_dtype).to(device)
    cos, sin = rope_tables(grid, hd, device, torch.float32)
    res = {}
    for name, x, w, (c, s) in (("q", q, wq, (cos, sin)), ("k", k, wk, (cos, sin)), ("norm", q, wq, (None, None))):
        ref = fused.rms_norm_rope_reference(x, w, c, s, heads, 1e-6)
        out = x.clone()
        assert fused.rms_norm_rope_(out, w, c, s, heads, 1e-6) is out  # in place
        res[f"{name}_err"] = _err(out, ref)
        res[f"{name}_mismatch"] = _mismatch(out, ref)
    return res


if __name__ == "__main__":
    # interpreter: fp16 (it truncates fp32 -> bf16 instead of rounding, Triton 3.9); small shapes, D not a
    # power of two, per-sample and per-token modulation, weights in the run dtype and in fp32
    out = {f"norm1:{k}": v for k, v in norm_cases("cpu", torch.float16, 2, 9, 320, 1).items()}
    out.update({f"norm2:{k}": v for k, v in norm_cases("cpu", torch.float16, 1, 7, 256, 7).items()})
    out.update(
        {
            f"rope1:{k}": v
            for k, v in rope_cases("cpu", torch.float16, 2, (2, 3, 2), 3, 64, torch.float16).items()
        }
    )
    out.update(
        {
            f"rope2:{k}": v
            for k, v in rope_cases("cpu", torch.float16, 1, (1, 2, 3), 2, 128, torch.float32).items()
        }
    )
    print(json.dumps(out))
    sys.stdout.flush()
