"""Fused LayerNorm (+ affine) (+ adaLN modulation) (+ per-token quantization) and the gated residual add
of the Wan DIT block, as one pass over the fp32 residual stream each, in Triton.

The official block computes ``LN(x).float() * (1 + scale) + shift`` and ``x + y * gate`` in fp32 with
separate PyTorch ops: 4-6 passes over a [tokens, dim] fp32 tensor each (a 480p Wan-14B block moves
~0.67 GB per pass). These kernels read x once and write the run-dtype (or fp8 / int8) result once, with
the same fp32 math: the outputs equal the official ones to fp32 rounding (different summation order,
one FMA), i.e. identical after the cast to bf16 except for rare last-bit ties.

``*_reference`` functions are the official numerics in PyTorch ops (CPU or CUDA); the Triton kernels
run on CUDA and in Triton's CPU interpreter (tests).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from lightx2v_quant.quant import formats as qf
from lightx2v_quant.quant.activation import QuantizedActivation

QUANT_CODES = {None: 0, "fp8": 1, "int8": 2}
ROUND_MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2^23: (x + M) - M rounds to nearest even for |x| < 2^22


@triton.jit
def _norm_kernel(
    x_ptr,
    out_ptr,
    qscale_ptr,
    shift_ptr,
    scale_ptr,
    w_ptr,
    b_ptr,
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
    AFFINE: tl.constexpr,
    MODULATE: tl.constexpr,
    QUANT: tl.constexpr,
):
    """One token (row) per program: LN in fp32, optional affine, optional (1 + scale) / shift, then the
    run dtype (QUANT=0), or fp8 (1) / int8 (2) with one scale per token."""
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
    if AFFINE:
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        bias = tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        h = h * w + bias
    if MODULATE:
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
            r = (h / s + ROUND_MAGIC) - ROUND_MAGIC  # round half to even, like torch.round
            q = tl.minimum(tl.maximum(r, -128.0), 127.0).to(tl.int8)
        tl.store(out_ptr + o_off, q, mask=mask)
        tl.store(qscale_ptr + row, s)


@triton.jit
def _gated_residual_kernel(
    x_ptr,
    y_ptr,
    gate_ptr,
    out_ptr,
    L,
    D,
    stride_xb,
    stride_xl,
    stride_yb,
    stride_yl,
    stride_gb,
    stride_gl,
    stride_ob,
    stride_ol,
    BLOCK_D: tl.constexpr,
    GATE: tl.constexpr,
):
    """out = x + y * gate in fp32 (gate omitted: out = x + y), one token per program, stored in out's
    dtype. out may be x (in place: each program reads its row before writing it)."""
    row = tl.program_id(0)
    b = row // L
    t = row % L
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    x = tl.load(x_ptr + b * stride_xb + t * stride_xl + cols, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + b * stride_yb + t * stride_yl + cols, mask=mask, other=0.0).to(tl.float32)
    if GATE:
        g = tl.load(gate_ptr + b * stride_gb + t * stride_gl + cols, mask=mask, other=0.0)
        out = x + y * g
    else:
        out = x + y
    tl.store(out_ptr + b * stride_ob + t * stride_ol + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def _warps(block: int) -> int:
    return max(1, min(16, block // 512))


def _mod_strides(m: torch.Tensor, batch: int, tokens: int) -> tuple[int, int]:
    """Strides of a modulation tensor [B or 1, Lt, D] with Lt = 1 (broadcast over tokens) or L."""
    if m.dim() != 3 or m.shape[1] not in (1, tokens) or m.shape[0] not in (1, batch) or m.stride(-1) != 1:
        raise ValueError(
            f"modulation tensors must be [B, 1 or L, D] with a contiguous last dim, got "
            f"{list(m.shape)} strides {m.stride()} for B={batch}, L={tokens}"
        )
    if m.dtype != torch.float32:
        raise ValueError(f"modulation tensors are fp32 (the official precision), got {m.dtype}")
    return (m.stride(0) if m.shape[0] > 1 else 0), (m.stride(1) if m.shape[1] > 1 else 0)


def layer_norm_modulate(
    x: torch.Tensor,
    eps: float,
    out_dtype: torch.dtype,
    *,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    quant: str | None = None,
) -> torch.Tensor | QuantizedActivation:
    """Triton: ``LN(x) [* weight + bias] [* (1 + scale) + shift]`` over the last dim of x [B, L, D], in fp32,
    returned in ``out_dtype`` [B, L, D], or with ``quant="fp8"/"int8"`` as a per-token QuantizedActivation."""
    B, L, D = x.shape
    if x.stride(-1) != 1:
        raise ValueError("layer_norm_modulate needs a contiguous last dim")
    if (shift is None) != (scale is None) or (weight is None) != (bias is None):
        raise ValueError("layer_norm_modulate takes shift with scale and weight with bias")
    if shift is not None and _mod_strides(shift, B, L) != _mod_strides(scale, B, L):
        raise ValueError("shift and scale must have the same layout")
    if quant not in QUANT_CODES:
        raise ValueError(f"quant must be one of {list(QUANT_CODES)}, got {quant!r}")
    out, qscale = _ln_op(x, eps, out_dtype, weight, bias, shift, scale, quant or "")
    return QuantizedActivation(out, qscale, out_dtype) if quant else out


@torch.library.custom_op("lightx2v_quant::layer_norm_modulate", mutates_args=())
def _ln_op(
    x: torch.Tensor,
    eps: float,
    out_dtype: torch.dtype,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    shift: torch.Tensor | None,
    scale: torch.Tensor | None,
    quant: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    # a custom op: opaque to torch.compile (no graph break, no tracing into the launch)
    B, L, D = x.shape
    modulate, affine = shift is not None, weight is not None
    smb, sml = _mod_strides(scale, B, L) if modulate else (0, 0)
    out = torch.empty(B, L, D, device=x.device, dtype=_out_dtype(out_dtype, quant))
    qscale = torch.empty(B, L, 1, device=x.device, dtype=torch.float32) if quant else x.new_empty(0)
    block = triton.next_power_of_2(D)
    dummy = x  # pointer arguments a flag turns off are never read
    _norm_kernel[(B * L,)](
        x,
        out,
        qscale if quant else dummy,
        shift if modulate else dummy,
        scale if modulate else dummy,
        weight if affine else dummy,
        bias if affine else dummy,
        L,
        D,
        x.stride(0),
        x.stride(1),
        smb,
        sml,
        out.stride(0),
        out.stride(1),
        eps,
        BLOCK_D=block,
        AFFINE=affine,
        MODULATE=modulate,
        QUANT=QUANT_CODES[quant or None],
        num_warps=_warps(block),
    )
    return out, qscale


@_ln_op.register_fake
def _(x, eps, out_dtype, weight, bias, shift, scale, quant):
    B, L, D = x.shape
    qscale = x.new_empty(B, L, 1, dtype=torch.float32) if quant else x.new_empty(0)
    return x.new_empty(B, L, D, dtype=_out_dtype(out_dtype, quant)), qscale


def _out_dtype(out_dtype: torch.dtype, quant: str) -> torch.dtype:
    return {"": out_dtype, "fp8": qf.FP8_DTYPE, "int8": torch.int8}[quant]


def layer_norm_modulate_reference(
    x: torch.Tensor,
    eps: float,
    out_dtype: torch.dtype,
    *,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    quant: str | None = None,
) -> torch.Tensor | QuantizedActivation:
    """The official numerics with PyTorch ops (what the unfused DIT block computes)."""
    w = weight.float() if weight is not None else None
    b = bias.float() if bias is not None else None
    h = F.layer_norm(x.float(), (x.shape[-1],), w, b, eps)
    if shift is not None:
        h = h * (1 + scale) + shift
    if quant is None:
        return h.to(out_dtype)
    fmt = qf.FORMATS[{"fp8": "w8a8-fp8-channel", "int8": "w8a8-int8-channel"}[quant]]
    q, s = fmt.quantize_activation(h.reshape(-1, h.shape[-1]))
    return QuantizedActivation(q.view(h.shape), s.view(*h.shape[:-1], 1), out_dtype)


def gated_residual_(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
    """IN PLACE: ``x += y * gate`` computed in fp32 and stored in x's dtype (fp32 for the official residual
    stream, bf16 for ``speed.residual=run_dtype``). x may be a token slice of the stream (the FFN adds
    its output chunk by chunk). Returns x. In place because a second residual stream is 0.6 GB at 480p."""
    _check_residual(x, y, gate)
    _gated_residual_inplace_op(x, y, gate)
    return x


def _check_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None) -> None:
    B, L, _ = x.shape
    if y.shape != x.shape or x.stride(-1) != 1 or y.stride(-1) != 1:
        raise ValueError(
            f"gated_residual wants x and y of one shape with a contiguous last dim, got "
            f"{list(x.shape)} and {list(y.shape)}"
        )
    if gate is not None:
        _mod_strides(gate, B, L)


@torch.library.custom_op("lightx2v_quant::gated_residual_", mutates_args=("x",))
def _gated_residual_inplace_op(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None) -> None:
    B, L, D = x.shape
    sgb, sgl = _mod_strides(gate, B, L) if gate is not None else (0, 0)
    block = triton.next_power_of_2(D)
    _gated_residual_kernel[(B * L,)](
        x,
        y,
        gate if gate is not None else x,
        x,
        L,
        D,
        x.stride(0),
        x.stride(1),
        y.stride(0),
        y.stride(1),
        sgb,
        sgl,
        x.stride(0),
        x.stride(1),
        BLOCK_D=block,
        GATE=gate is not None,
        num_warps=_warps(block),
    )


@_gated_residual_inplace_op.register_fake
def _(x, y, gate):
    return None


def gated_residual_reference(
    x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None = None
) -> torch.Tensor:
    """x + y * gate (or x + y) in fp32, in x's dtype (what gated_residual_ stores)."""
    return (x.float() + y.float() * gate if gate is not None else x.float() + y.float()).to(x.dtype)


def SASS_CASES():  # noqa: N802 - picked up by benchmarks/triton_sass.py
    sig = {
        "x_ptr": "*fp32",
        "out_ptr": "*fp8e4nv",
        "qscale_ptr": "*fp32",
        "shift_ptr": "*fp32",
        "scale_ptr": "*fp32",
        "w_ptr": "*fp32",
        "b_ptr": "*fp32",
        **{
            n: "i32"
            for n in ("L", "D", "stride_xb", "stride_xl", "stride_mb", "stride_ml", "stride_ob", "stride_ol")
        },
        "eps": "fp32",
    }
    div16 = ["D", "stride_xb", "stride_xl", "stride_mb", "stride_ob", "stride_ol"]
    for quant, out in ((0, "*bf16"), (1, "*fp8e4nv"), (2, "*i8")):
        const = {"BLOCK_D": 8192, "AFFINE": False, "MODULATE": True, "QUANT": quant}
        yield (f"ln_mod_q{quant}_5120", _norm_kernel, dict(sig, out_ptr=out), const, {"num_warps": 16}, div16)
