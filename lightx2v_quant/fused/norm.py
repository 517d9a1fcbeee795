"""Fused LayerNorm (+ affine) (+ adaLN modulation) (+ per-token quantization) of the Wan DIT block, one
pass over the fp32 residual stream, in Triton (the gated residual add is in ``fused/residual.py``).

The official block computes ``LN(x).float() * (1 + scale) + shift`` and ``x + y * gate`` in fp32 with
separate PyTorch ops: 4-6 passes over a [tokens, dim] fp32 tensor each (a 480p Wan-14B block moves
~0.67 GB per pass). These kernels read x once and write the run-dtype (or fp8 / int8) result once, with
the same fp32 math: the outputs equal the official ones to fp32 rounding (different summation order,
one FMA), i.e. identical after the cast to bf16 except for rare last-bit ties. Quantized outputs use the
per-token quantizer's arithmetic (``quant.kernels.triton_quant``): the bytes and scales are exactly the
format's quantization of the kernel's own fp32 result.

The LN kernel is laid out for bandwidth like the per-token quantizer (docs/speed.md): a row in registers
as a few [R, G] tiles, x read once, one cross-warp reduction per statistic; rows longer than MAX_TILED_K
take a sweeping kernel instead.

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
from lightx2v_quant.quant.kernels.triton_quant import (
    MAX_TILED_K,
    _quantize_values,
    _row_scale,
    cdiv,
    long_block_k,
    next_pow2,
    tile_rows,
)

QUANT_CODES = {None: 0, "fp8": 1, "int8": 2}
QMAX_OF_CODE = {0: 1.0, 1: qf.FP8_MAX, 2: qf.INT8_MAX}  # per QUANT code (1.0: unused)


@triton.jit
def _cols(col0, R: tl.constexpr, G: tl.constexpr, VEC: tl.constexpr):
    """Column indices [col0, col0 + R*G) of a row as an [R, G] tile (the per-token quantizer's layout),
    claiming only VEC contiguous columns: one 16-byte vector of x per thread. Left alone, Triton widens
    every access of a tile to its widest operand (16 fp8 outputs, 8 bf16 weights per thread): a layout
    that differs between tiles of different R, so each row reduction would go through shared memory."""
    return tl.max_contiguous(col0 + tl.arange(0, R)[:, None] * G + tl.arange(0, G)[None, :], [1, VEC])


@triton.jit
def _load_f32(ptr, col0, D, R: tl.constexpr, G: tl.constexpr, VEC: tl.constexpr, MASKED: tl.constexpr):
    """An [R, G] tile of ptr[col0:] in fp32, 0 past D."""
    cols = _cols(col0, R, G, VEC)
    if MASKED:
        v = tl.load(ptr + cols, mask=cols < D, other=0.0)
    else:
        v = tl.load(ptr + cols)
    return v.to(tl.float32)


@triton.jit
def _centered(x, mean, col0, D, R: tl.constexpr, G: tl.constexpr, VEC: tl.constexpr, MASKED: tl.constexpr):
    """x - mean, and 0 past D (so that the variance, and every later value there, is exactly 0)."""
    xc = x - mean
    if MASKED:
        xc = tl.where(_cols(col0, R, G, VEC) < D, xc, 0.0)
    return xc


@triton.jit
def _normalized(
    xc,
    rstd,
    col0,
    D,
    w_ptr,
    b_ptr,
    sc_row,
    sh_row,
    R: tl.constexpr,
    G: tl.constexpr,
    VEC: tl.constexpr,
    MASKED: tl.constexpr,
    AFFINE: tl.constexpr,
    MODULATE: tl.constexpr,
):
    """xc * rstd [* w + b] [* (1 + scale) + shift] in fp32; 0 where xc is 0 past D (the loads give 0)."""
    h = xc * rstd
    if AFFINE:
        w = _load_f32(w_ptr, col0, D, R, G, VEC, MASKED)
        h = h * w + _load_f32(b_ptr, col0, D, R, G, VEC, MASKED)
    if MODULATE:
        sc = _load_f32(sc_row, col0, D, R, G, VEC, MASKED)
        h = h * (1.0 + sc) + _load_f32(sh_row, col0, D, R, G, VEC, MASKED)
    return h


@triton.jit
def _store_out(
    o_row,
    h,
    col0,
    D,
    s,
    rcp,
    R: tl.constexpr,
    G: tl.constexpr,
    VEC: tl.constexpr,
    MASKED: tl.constexpr,
    QUANT: tl.constexpr,
):
    """Store a tile of results in the output dtype (QUANT=0), or quantized with scale s and rcp = 1 / s
    (the per-token quantizer's exact numerics: fp8 for QUANT=1, int8 for 2)."""
    if QUANT == 0:
        v = h.to(o_row.dtype.element_ty)
    else:
        v = _quantize_values(h, s, rcp, QUANT == 2)
    cols = _cols(col0, R, G, VEC)
    if MASKED:
        tl.store(o_row + cols, v, mask=cols < D)
    else:
        tl.store(o_row + cols, v)


@triton.jit
def _row_sum(t0, t1, t2, t3, R1: tl.constexpr, R2: tl.constexpr, R3: tl.constexpr):
    """Sum of a row held as [R, G] tiles: each tile summed over R inside its threads first, the [G]
    partials (one layout for every R) added, then ONE reduction across the program's warps."""
    s = tl.sum(t0, axis=0)
    if R1 > 0:
        s += tl.sum(t1, axis=0)
    if R2 > 0:
        s += tl.sum(t2, axis=0)
    if R3 > 0:
        s += tl.sum(t3, axis=0)
    return tl.sum(s, axis=0)


@triton.jit
def _row_absmax(t0, t1, t2, t3, R1: tl.constexpr, R2: tl.constexpr, R3: tl.constexpr):
    """|max| of a row held as [R, G] tiles, with one reduction across warps (as ``_row_sum``)."""
    m = tl.max(tl.abs(t0), axis=0)
    if R1 > 0:
        m = tl.maximum(m, tl.max(tl.abs(t1), axis=0))
    if R2 > 0:
        m = tl.maximum(m, tl.max(tl.abs(t2), axis=0))
    if R3 > 0:
        m = tl.maximum(m, tl.max(tl.abs(t3), axis=0))
    return tl.max(m, axis=0)


@triton.jit
def _row_ptrs(
    row, L, x_ptr, out_ptr, scale_ptr, shift_ptr, stride_xb, stride_xl, stride_mb, stride_ml, stride_ob, stride_ol
):
    """Pointers to token ``row`` (flat over [B, L]) of x, the output and the modulation's scale and shift."""
    b = row // L
    t = row % L
    return (
        x_ptr + b * stride_xb + t * stride_xl,
        out_ptr + b * stride_ob + t * stride_ol,
        scale_ptr + b * stride_mb + t * stride_ml,
        shift_ptr + b * stride_mb + t * stride_ml,
    )


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
    AFFINE: tl.constexpr,
    MODULATE: tl.constexpr,
    QUANT: tl.constexpr,
    QMAX: tl.constexpr,
    G: tl.constexpr,
    R0: tl.constexpr,
    R1: tl.constexpr,
    R2: tl.constexpr,
    R3: tl.constexpr,
    MASKED: tl.constexpr,
    VEC: tl.constexpr,
):
    """One token (row) per program, held in registers as tiles of R0..R3 (0 = absent) rows of G
    elements (``triton_quant.tile_rows``), so x is read from memory once: LN in fp32 (two-pass mean and
    variance over the registers), optional affine, optional (1 + scale) / shift, then the output dtype
    (QUANT=0) or fp8 (1) / int8 (2) with one scale per token, quantized as the per-token quantizer does."""
    row = tl.program_id(0).to(tl.int64)
    x_row, o_row, sc_row, sh_row = _row_ptrs(
        row, L, x_ptr, out_ptr, scale_ptr, shift_ptr, stride_xb, stride_xl, stride_mb, stride_ml, stride_ob, stride_ol
    )
    k1 = R0 * G  # first columns of the tiles
    k2 = (R0 + R1) * G
    k3 = (R0 + R1 + R2) * G
    # Every x load is issued before the first reduction (whose barriers would hold later loads back).
    x0 = _load_f32(x_row, 0, D, R0, G, VEC, MASKED)
    x1, x2, x3 = x0, x0, x0  # absent tiles: placeholders that are never read
    if R1 > 0:
        x1 = _load_f32(x_row, k1, D, R1, G, VEC, MASKED)
    if R2 > 0:
        x2 = _load_f32(x_row, k2, D, R2, G, VEC, MASKED)
    if R3 > 0:
        x3 = _load_f32(x_row, k3, D, R3, G, VEC, MASKED)
    mean = _row_sum(x0, x1, x2, x3, R1, R2, R3) / D
    x0 = _centered(x0, mean, 0, D, R0, G, VEC, MASKED)
    if R1 > 0:
        x1 = _centered(x1, mean, k1, D, R1, G, VEC, MASKED)
    if R2 > 0:
        x2 = _centered(x2, mean, k2, D, R2, G, VEC, MASKED)
    if R3 > 0:
        x3 = _centered(x3, mean, k3, D, R3, G, VEC, MASKED)
    rstd = 1.0 / tl.sqrt(_row_sum(x0 * x0, x1 * x1, x2 * x2, x3 * x3, R1, R2, R3) / D + eps)
    h0 = _normalized(x0, rstd, 0, D, w_ptr, b_ptr, sc_row, sh_row, R0, G, VEC, MASKED, AFFINE, MODULATE)
    h1, h2, h3 = h0, h0, h0
    if R1 > 0:
        h1 = _normalized(x1, rstd, k1, D, w_ptr, b_ptr, sc_row, sh_row, R1, G, VEC, MASKED, AFFINE, MODULATE)
    if R2 > 0:
        h2 = _normalized(x2, rstd, k2, D, w_ptr, b_ptr, sc_row, sh_row, R2, G, VEC, MASKED, AFFINE, MODULATE)
    if R3 > 0:
        h3 = _normalized(x3, rstd, k3, D, w_ptr, b_ptr, sc_row, sh_row, R3, G, VEC, MASKED, AFFINE, MODULATE)
    s, rcp = 1.0, 1.0  # unquantized: unused
    if QUANT != 0:
        # h is exactly 0 past D (see _normalized), so the padding never raises the |max|
        s, rcp = _row_scale(_row_absmax(h0, h1, h2, h3, R1, R2, R3), QMAX)
        tl.store(qscale_ptr + row, s)
    _store_out(o_row, h0, 0, D, s, rcp, R0, G, VEC, MASKED, QUANT)
    if R1 > 0:
        _store_out(o_row, h1, k1, D, s, rcp, R1, G, VEC, MASKED, QUANT)
    if R2 > 0:
        _store_out(o_row, h2, k2, D, s, rcp, R2, G, VEC, MASKED, QUANT)
    if R3 > 0:
        _store_out(o_row, h3, k3, D, s, rcp, R3, G, VEC, MASKED, QUANT)


@triton.jit
def _norm_long_kernel(
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
    AFFINE: tl.constexpr,
    MODULATE: tl.constexpr,
    QUANT: tl.constexpr,
    QMAX: tl.constexpr,
    BLOCK: tl.constexpr,
    VEC: tl.constexpr,
):
    """Rows longer than MAX_TILED_K: sweeps of [1, BLOCK] tiles for the mean, the variance, then the
    output (quantized: one sweep for the |max| of the result, one to quantize); re-reads mostly hit L2."""
    row = tl.program_id(0).to(tl.int64)
    x_row, o_row, sc_row, sh_row = _row_ptrs(
        row, L, x_ptr, out_ptr, scale_ptr, shift_ptr, stride_xb, stride_xl, stride_mb, stride_ml, stride_ob, stride_ol
    )
    acc = tl.zeros([1, BLOCK], dtype=tl.float32)
    for k0 in range(0, D, BLOCK):
        acc += _load_f32(x_row, k0, D, 1, BLOCK, VEC, True)
    mean = tl.sum(tl.sum(acc, axis=0), axis=0) / D
    acc = tl.zeros([1, BLOCK], dtype=tl.float32)
    for k0 in range(0, D, BLOCK):
        xc = _centered(_load_f32(x_row, k0, D, 1, BLOCK, VEC, True), mean, k0, D, 1, BLOCK, VEC, True)
        acc += xc * xc
    rstd = 1.0 / tl.sqrt(tl.sum(tl.sum(acc, axis=0), axis=0) / D + eps)
    s, rcp = 1.0, 1.0  # unquantized: unused
    if QUANT != 0:
        m = tl.zeros([1, BLOCK], dtype=tl.float32)
        for k0 in range(0, D, BLOCK):
            xc = _centered(_load_f32(x_row, k0, D, 1, BLOCK, VEC, True), mean, k0, D, 1, BLOCK, VEC, True)
            h = _normalized(
                xc, rstd, k0, D, w_ptr, b_ptr, sc_row, sh_row, 1, BLOCK, VEC, True, AFFINE, MODULATE
            )
            m = tl.maximum(m, tl.abs(h))
        s, rcp = _row_scale(tl.max(tl.max(m, axis=0), axis=0), QMAX)
        tl.store(qscale_ptr + row, s)
    for k0 in range(0, D, BLOCK):
        xc = _centered(_load_f32(x_row, k0, D, 1, BLOCK, VEC, True), mean, k0, D, 1, BLOCK, VEC, True)
        h = _normalized(xc, rstd, k0, D, w_ptr, b_ptr, sc_row, sh_row, 1, BLOCK, VEC, True, AFFINE, MODULATE)
        _store_out(o_row, h, k0, D, s, rcp, 1, BLOCK, VEC, True, QUANT)


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
    out = torch.empty(B, L, D, device=x.device, dtype=_out_dtype(out_dtype, quant))
    qscale = torch.empty(B, L, 1, device=x.device, dtype=torch.float32) if quant else x.new_empty(0)
    if out.numel():
        launch_norm(x, out, qscale, eps, weight, bias, shift, scale, quant or None)
    return out, qscale


def norm_warps(d: int, elem_bytes: int) -> int:
    """Warps per row: about five 16-byte vectors of x per thread (as the per-token quantizer), so a row
    of 5120 is 8 warps in fp32 and 4 in bf16; several rows then fit an SM at once to keep loads in flight."""
    return min(16, next_pow2(cdiv(d, (16 // elem_bytes) * 32 * 5)))


def launch_norm(
    x: torch.Tensor,
    out: torch.Tensor,
    qscale: torch.Tensor,
    eps: float,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    shift: torch.Tensor | None,
    scale: torch.Tensor | None,
    quant: str | None,
    num_warps: int | None = None,
    tiled: bool | None = None,
) -> None:
    """Unchecked launch of the LN kernel into out [B, L, D] (last dim contiguous) and, quantized, a
    contiguous qscale [B, L, 1]. ``num_warps`` (default ``norm_warps``) and ``tiled`` (default
    D <= MAX_TILED_K; False forces the sweeping kernel) are for tests and benchmarks."""
    B, L, D = x.shape
    modulate, affine = shift is not None, weight is not None
    smb, sml = _mod_strides(scale, B, L) if modulate else (0, 0)
    warps = num_warps or norm_warps(D, x.element_size())
    dummy = x  # pointer arguments a flag turns off are never read
    args = (
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
    )
    code = QUANT_CODES[quant]
    meta = {
        "AFFINE": affine,
        "MODULATE": modulate,
        "QUANT": code,
        "QMAX": QMAX_OF_CODE[code],
        "num_warps": warps,
    }
    if (D <= MAX_TILED_K) if tiled is None else tiled:
        g, (r0, r1, r2, r3), masked = tile_rows(D, warps, x.element_size())
        vec = 16 // x.element_size()
        tiles = {"G": g, "R0": r0, "R1": r1, "R2": r2, "R3": r3, "MASKED": masked, "VEC": vec}
        _norm_kernel[(B * L,)](*args, **tiles, **meta)
    else:
        block = long_block_k(warps, x.element_size())
        _norm_long_kernel[(B * L,)](*args, BLOCK=block, VEC=16 // x.element_size(), **meta)


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


def SASS_CASES():  # noqa: N802 - picked up by benchmarks/triton_sass.py
    """The LN kernels at Wan-14B's width (5120) as the DIT launches them (fp32 or bf16 residual stream;
    norm1 / norm2 with per-sample modulation to bf16 / fp8 / int8; norm3 affine with bf16 weights), and
    the sweeping kernel for rows past MAX_TILED_K; default warps."""
    ints = ("L", "D", "stride_xb", "stride_xl", "stride_mb", "stride_ml", "stride_ob", "stride_ol")
    # the broadcast modulation's stride_ml is 0, which the JIT specializes like a multiple of 16
    div16 = ["D", "stride_xb", "stride_xl", "stride_mb", "stride_ml", "stride_ob", "stride_ol"]
    outs = {0: "*bf16", 1: "*fp8e4nv", 2: "*i8"}
    cases = [(x, q, False, 5120) for x in ("fp32", "bf16") for q in (0, 1, 2)]
    cases += [("fp32", 0, True, 5120), ("fp32", 1, True, 5120), ("fp32", 1, False, 20480)]
    for x_ty, quant, affine, d in cases:
        elem = 4 if x_ty == "fp32" else 2
        warps = norm_warps(d, elem)
        sig = {
            "x_ptr": f"*{x_ty}",
            "out_ptr": outs[quant],
            "qscale_ptr": "*fp32" if quant else f"*{x_ty}",
            "shift_ptr": f"*{x_ty}" if affine else "*fp32",
            "scale_ptr": f"*{x_ty}" if affine else "*fp32",
            "w_ptr": "*bf16" if affine else f"*{x_ty}",
            "b_ptr": "*bf16" if affine else f"*{x_ty}",
            **{n: "i32" for n in ints},
            "eps": "fp32",
        }
        const = {"AFFINE": affine, "MODULATE": not affine, "QUANT": quant, "QMAX": QMAX_OF_CODE[quant]}
        name = f"ln_{'affine' if affine else 'mod'}_{x_ty}_q{quant}_{d}_w{warps}"
        if d <= MAX_TILED_K:
            g, (r0, r1, r2, r3), masked = tile_rows(d, warps, elem)
            const.update(G=g, R0=r0, R1=r1, R2=r2, R3=r3, MASKED=masked, VEC=16 // elem)
            yield name, _norm_kernel, sig, const, {"num_warps": warps}, div16
        else:
            const.update(BLOCK=long_block_k(warps, elem), VEC=16 // elem)
            yield name + "_long", _norm_long_kernel, sig, const, {"num_warps": warps}, div16
