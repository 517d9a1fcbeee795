"""Norm cases of benchmarks/fused_ops.py: the DIT's fused LayerNorm + modulation (+ per-token fp8 / int8
quantization), ``fused.layer_norm_modulate``, at one 480p Wan-14B residual stream ([32760, 5120]) read
in fp32 (the official residual) and bf16 (``speed.residual=run_dtype``), written in bf16, fp8 and int8.

Per case: median GPU time and effective bandwidth of the library kernel at its default warps and at each
warp count, of the kernel it replaced (kept HERE only, as ``_old_norm_kernel``, for the comparison: one
row per program padded to a power of two, 16 warps), and exactness: the share of output bytes that differ
between the two, and whether the quantized output equals the per-token quantizer applied to the
kernel's own fp32 output (it should, bit for bit).
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from bench_utils import bench, timing_dict

from lightx2v_quant.fused import norm as fn
from lightx2v_quant.quant import formats as qf

NORM_SHAPES = {"wan14b-480p": (32760, 5120)}
_ROUND_MAGIC = tl.constexpr(12582912.0)


@triton.jit
def _old_norm_kernel(
    x_ptr,
    out_ptr,
    qscale_ptr,
    shift_ptr,
    scale_ptr,
    L,
    D,
    stride_xb,
    stride_xl,
    stride_mb,
    stride_ml,
    stride_ob,
    stride_ol,
    eps,
    BLOCK_D: tl.constexpr,
    QUANT: tl.constexpr,
):
    """The replaced kernel (modulated path), as it was: one row per program in a BLOCK_D = next power of
    two block, mean / variance / |max| each reduced across 16 warps, division by the scale with '/'."""
    row = tl.program_id(0)
    b = row // L
    t = row % L
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    x = tl.load(x_ptr + b * stride_xb + t * stride_xl + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, 0) / D
    xc = tl.where(mask, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 0) / D + eps)
    h = xc * rstd
    m_off = b * stride_mb + t * stride_ml + cols
    sc = tl.load(scale_ptr + m_off, mask=mask, other=0.0)
    sh = tl.load(shift_ptr + m_off, mask=mask, other=0.0)
    h = h * (1.0 + sc) + sh
    o_off = b * stride_ob + t * stride_ol + cols
    if QUANT == 0:
        tl.store(out_ptr + o_off, h.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        amax = tl.maximum(tl.max(tl.where(mask, tl.abs(h), 0.0), 0), 1e-8)
        if QUANT == 1:
            s = amax / 448.0
            q = tl.minimum(tl.maximum(h / s, -448.0), 448.0).to(tl.float8e4nv)
        else:
            s = amax / 127.0
            r = (h / s + _ROUND_MAGIC) - _ROUND_MAGIC
            q = tl.minimum(tl.maximum(r, -128.0), 127.0).to(tl.int8)
        tl.store(out_ptr + o_off, q, mask=mask)
        tl.store(qscale_ptr + row, s)


def _old_launch(x, out, qscale, shift, scale, quant: str | None) -> None:
    B, L, D = x.shape
    block = triton.next_power_of_2(D)
    sml = scale.stride(1) if scale.shape[1] > 1 else 0
    smb = scale.stride(0) if scale.shape[0] > 1 else 0
    _old_norm_kernel[(B * L,)](
        x,
        out,
        qscale if quant else x,
        shift,
        scale,
        L,
        D,
        x.stride(0),
        x.stride(1),
        smb,
        sml,
        out.stride(0),
        out.stride(1),
        1e-6,
        BLOCK_D=block,
        QUANT=fn.QUANT_CODES[quant],
        num_warps=max(1, min(16, block // 512)),
    )


def _outputs(x: torch.Tensor, quant: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = fn._out_dtype(torch.bfloat16, quant or "")
    out = torch.empty(x.shape, device=x.device, dtype=dtype)
    return out, torch.empty(*x.shape[:-1], 1, device=x.device) if quant else x.new_empty(0)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return (
        t.view(torch.uint8)
        if t.dtype == qf.FP8_DTYPE
        else t.view(torch.int16)
        if t.element_size() == 2
        else t
    )


def run_norm_case(
    name: str, m: int, d: int, x_dtype: torch.dtype, quant: str | None, device: str, target_s: float
):
    g = torch.Generator(device).manual_seed(0)
    copies = 2 if device == "cuda" else 1  # 2 x 0.67 GB (fp32): far more than the L2
    xs = [(torch.randn(1, m, d, generator=g, device=device) * 3 + 1).to(x_dtype) for _ in range(copies)]
    mod = torch.randn(1, 1, 6, d, generator=g, device=device).unbind(2)  # strided like the DIT's
    shift, scale = mod[0], mod[1]
    out, qs = _outputs(xs[0], quant)
    res: dict[str, Any] = {
        "case": name,
        "m": m,
        "d": d,
        "x": str(x_dtype).replace("torch.", ""),
        "out": quant or "bf16",
    }
    # exactness: old vs new bytes; quantized new vs the per-token quantizer on the new fp32 output
    fn.launch_norm(xs[0], out, qs, 1e-6, None, None, shift, scale, quant)
    old, old_qs = _outputs(xs[0], quant)
    _old_launch(xs[0], old, old_qs, shift, scale, quant)
    res["old_new_byte_mismatch"] = float((_bits(out) != _bits(old)).double().mean())
    if quant:
        h = torch.empty(xs[0].shape, device=device)
        fn.launch_norm(xs[0], h, h.new_empty(0), 1e-6, None, None, shift, scale, None)
        fmt = {"fp8": "w8a8-fp8-channel", "int8": "w8a8-int8-channel"}[quant]
        q_ref, s_ref = qf.FORMATS[fmt].quantize_activation(h.reshape(-1, d))
        res["new_equals_quantizer"] = bool(
            torch.equal(_bits(out.reshape(-1, d)), _bits(q_ref)) and torch.equal(qs.reshape(-1, 1), s_ref)
        )
        del h, q_ref, s_ref
    del old, old_qs

    def new(i: int, w: int | None = None):
        fn.launch_norm(xs[i], out, qs, 1e-6, None, None, shift, scale, quant, num_warps=w)

    res["new"] = timing_dict(bench(new, copies, target_s=target_s, device=device))
    res["old"] = timing_dict(
        bench(
            lambda i: _old_launch(xs[i], out, qs, shift, scale, quant),
            copies,
            target_s=target_s,
            device=device,
        )
    )
    moved = m * d * (xs[0].element_size() + out.element_size()) + (4 * m if quant else 0)
    for key in ("new", "old"):
        res[f"{key}_gbps"] = round(moved / (res[key]["median_ms"] * 1e6), 1)
    res["speedup"] = round(res["old"]["median_ms"] / res["new"]["median_ms"], 3)
    res["default_warps"] = fn.norm_warps(d, xs[0].element_size())
    res["new_ms_by_warps"] = {
        str(w): timing_dict(bench(lambda i, w=w: new(i, w), copies, target_s=target_s, device=device))[
            "median_ms"
        ]
        for w in (2, 4, 8, 16)
    }
    return res
