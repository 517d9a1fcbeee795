"""Cases for the fused norm / residual / RoPE kernels vs their PyTorch references (the official numerics);
run in Triton's interpreter by the tests (a subprocess with TRITON_INTERPRET=1) and directly on CUDA."""

from __future__ import annotations

import json
import sys

import torch

from lightx2v_quant import fused
from lightx2v_quant.models.wan.rope import rope_tables
from lightx2v_quant.quant import formats as qf


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


def norm_geometry_cases(
    device: str, x_dtype: torch.dtype, B: int, L: int, D: int, Lt: int, **launch_kw
) -> dict[str, float]:
    """The LN kernel at one launch geometry (``launch_kw``: num_warps, tiled=False for the sweeping
    kernel; default: what layer_norm_modulate picks) on an x of ``x_dtype`` (fp32 residual stream, or
    bf16 / fp16 with speed.residual=run_dtype). Against the reference: the fp32 output's error, and
    whether its per-token quantization is EXACTLY the format's reference quantization of the kernel's own
    fp32 output (same bytes, same scales), for modulated and affine norms."""
    from lightx2v_quant.fused import norm as fn

    g = torch.Generator().manual_seed(2)
    x = (torch.randn(B, L, D, generator=g) * 3 + 1).to(x_dtype).to(device)
    mod = (torch.randn(B, Lt, 6, D, generator=g) * 0.5).to(device).unbind(2)
    w = (1 + 0.1 * torch.randn(D, generator=g)).to(device)
    bias = (0.1 * torch.randn(D, generator=g)).to(device)
    res = {}
    for name, kw in (("mod", {"shift": mod[0], "scale": mod[1]}), ("affine", {"weight": w, "bias": bias})):
        args = (kw.get("weight"), kw.get("bias"), kw.get("shift"), kw.get("scale"))
        h = torch.empty(B, L, D, device=device)
        fn.launch_norm(x, h, h.new_empty(0), 1e-6, *args, None, **launch_kw)
        ref = fn.layer_norm_modulate_reference(x, 1e-6, torch.float32, **kw)
        res[f"{name}_err"] = _err(h, ref)
        for quant, fmt in (("fp8", "w8a8-fp8-channel"), ("int8", "w8a8-int8-channel")):
            q = torch.empty(B, L, D, device=device, dtype=fn._out_dtype(torch.float32, quant))
            s = torch.empty(B, L, 1, device=device)
            fn.launch_norm(x, q, s, 1e-6, *args, quant, **launch_kw)
            q_ref, s_ref = qf.FORMATS[fmt].quantize_activation(h.reshape(-1, D))
            res[f"{name}_q{quant}_bytes_differ"] = _mismatch(q.reshape(-1, D), q_ref)
            res[f"{name}_q{quant}_scales_differ"] = _mismatch(s.reshape(-1, 1), s_ref)
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
        if name != "k" and hd in (64, 128):
            # q for the low-precision attention: norm + RoPE + int8 in one pass is quantize_q of the
            # written q, bit for bit (padding rows included: L is never a multiple of 128 here)
            from lightx2v_quant.attention.lowp_quant import quantize_q

            sm_scale = hd**-0.5 * 1.4426950408889634
            q8, qs = fused.rms_norm_rope_quant(x, w, c, s, heads, 1e-6, sm_scale)
            r8, rs = quantize_q(out.unflatten(-1, (heads, hd)), sm_scale)
            res[f"{name}_quant_q8_differ"] = _mismatch(q8, r8)
            res[f"{name}_quant_scales_differ"] = _mismatch(qs, rs)
    return res


if __name__ == "__main__":
    # interpreter: fp16 (it truncates fp32 -> bf16 instead of rounding, Triton 3.9); small shapes, D not a
    # power of two, per-sample and per-token modulation, weights in the run dtype and in fp32
    out = {f"norm1:{k}": v for k, v in norm_cases("cpu", torch.float16, 2, 9, 320, 1).items()}
    out.update({f"norm2:{k}": v for k, v in norm_cases("cpu", torch.float16, 1, 7, 256, 7).items()})
    # launch geometries: fp32 and fp16 x; widths not a power of two (nor a multiple of 4: unaligned,
    # masked); four tiles per row (8 + 4 + 2 + 1 rows of one warp's G, the last masked); a width past
    # MAX_TILED_K; the sweeping kernel forced on a short row (masked last block)
    geometries = {
        "g1": (torch.float32, 2, 3, 320, 1, {}),
        "g2": (torch.float16, 1, 5, 1536, 5, {}),
        "g3": (torch.float32, 1, 2, 1858, 1, {"num_warps": 1}),
        "g4": (torch.float16, 1, 3, 3770, 3, {"num_warps": 1}),
        "g5": (torch.float32, 1, 2, 16392, 1, {}),
        "g6": (torch.float32, 2, 2, 1100, 1, {"tiled": False, "num_warps": 1}),
    }
    for tag, (x_dtype, B, L, D, Lt, kw) in geometries.items():
        out.update(
            {f"{tag}:{k}": v for k, v in norm_geometry_cases("cpu", x_dtype, B, L, D, Lt, **kw).items()}
        )
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
