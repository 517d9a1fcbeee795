"""Fused q/k RMSNorm + 3D RoPE of the Wan DIT self-attention, in Triton: one in-place pass over q or k.

The official path runs ``rms_norm(x.float()).type_as(x) * weight``, splits heads, upcasts to the RoPE
dtype, rotates adjacent channel pairs with 6 elementwise ops and casts back: ~10 passes over each
[tokens, dim] tensor. The kernel reads each token's row once (all heads: the RMS spans every head),
keeps the same roundings (normalized value rounded to the input dtype, times the weight rounded when
the weight is in the input dtype) and rotates in fp32, so it matches the official bf16 path to fp32
rounding of the rotation (float64 for fp32 runs is not offered here).

``rms_norm_rope_quant`` is the same pass for q ahead of the low-precision attention: instead of writing
q back it quantizes each (token, head) row as ``lowp_quant.quantize_q`` would from the written q (same
roundings: bit-identical), so the bf16 q is neither written nor read again.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lightx2v_quant.attention.lowp_quant import int8_rows, q_buffers


@triton.jit
def _norm_rope_kernel(
    x_ptr,
    w_ptr,
    cos_ptr,
    sin_ptr,
    o_ptr,
    q8_ptr,
    qs_ptr,
    L,
    LR,
    LP,
    mul,
    stride_xb,
    stride_xl,
    stride_rl,
    eps,
    H: tl.constexpr,
    HP2: tl.constexpr,
    HD: tl.constexpr,
    ROUND_W: tl.constexpr,
    ROPE: tl.constexpr,
    QUANT: tl.constexpr,
):
    """One program per token (LR per sample): RMSNorm of its whole row (all heads), then (ROPE) the rotation
    per head. The row is read entirely before it is written, so ``o_ptr`` may be ``x_ptr`` (in place).
    QUANT: int8 rows (scale ``mul`` folded in) to q8 [B*H, LP, HD] and their scales to qs [B*H, LP]
    instead of o; then LR = LP and the rows t >= L are the zero padding (scale AMAX_EPS / 127, as
    ``lowp_quant.quantize_q`` writes it)."""
    row = tl.program_id(0)
    b = row // LR
    t = row % LR
    hh = tl.arange(0, HP2)
    dd = tl.arange(0, HD)
    mask = (hh[:, None] < H) & ((dd[None, :] * 0 + t) < L)  # (tensor masks: Triton's interpreter)
    offs = hh[:, None] * HD + dd[None, :]  # [HP2, HD]: heads x head dim of one token
    base = b * stride_xb + t * stride_xl
    x = tl.load(x_ptr + base + offs, mask=mask, other=0.0)
    xf = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(tl.sum(xf * xf, 1), 0) / (H * HD) + eps)
    y = (xf * rstd).to(x.dtype).to(tl.float32)  # .type_as(x) of the official RMSNorm
    y = y * tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if ROUND_W:  # weight in the run dtype: the product is rounded to it too
        y = y.to(x.dtype).to(tl.float32)
    if ROPE:  # rotate pairs (2i, 2i+1) of every head by the token's angles (the same for all heads)
        a, c = tl.split(tl.reshape(y, [HP2, HD // 2, 2]))
        half = tl.arange(0, HD // 2)
        live = (half * 0 + t) < L  # the padding rows past L have no angles
        cs = tl.load(cos_ptr + t * stride_rl + half, mask=live, other=0.0)[None, :]
        sn = tl.load(sin_ptr + t * stride_rl + half, mask=live, other=0.0)[None, :]
        y = tl.reshape(tl.join(a * cs - c * sn, a * sn + c * cs), [HP2, HD])
    if QUANT:  # what quantize_q computes from the stored row: rounded to x's dtype, then scaled
        q8, scale = int8_rows(y.to(x.dtype).to(tl.float32) * mul)
        bh = b * H + hh
        tl.store(q8_ptr + (bh[:, None] * LP + t) * HD + dd[None, :], q8, mask=hh[:, None] < H)
        tl.store(qs_ptr + bh * LP + t, scale, mask=hh < H)
    else:
        tl.store(o_ptr + base + offs, y.to(x.dtype), mask=mask)


def rms_norm_rope_(
    x: torch.Tensor,
    weight: torch.Tensor,
    cos: torch.Tensor | None,
    sin: torch.Tensor | None,
    num_heads: int,
    eps: float,
) -> torch.Tensor:
    """IN PLACE on x [B, L, D] (bf16 / fp16): RMSNorm(weight) over D, then RoPE per head (skipped when
    ``cos`` is None: the cross-attention's q / k norm). Returns x.

    In place because at 480p each q / k is 0.3 GB and a second copy would set the DIT's peak memory.
    cos / sin [L, head_dim/2] fp32 angles' cosines / sines for the tokens in order."""
    _check(x, weight, cos, sin, num_heads, "rms_norm_rope_")
    _norm_rope_op(x, weight, cos, sin, num_heads, eps)
    return x


def rms_norm_rope_quant(
    x: torch.Tensor,
    weight: torch.Tensor,
    cos: torch.Tensor | None,
    sin: torch.Tensor | None,
    num_heads: int,
    eps: float,
    sm_scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B, L, D] (not modified) -> the low-precision attention's quantized q: RMSNorm(weight), RoPE, then
    int8 per (token, head) with ``sm_scale`` folded in, in one pass. Returns int8 [B*H, LP, hd] and fp32
    [B*H, LP] scales, LP = L rounded up to 128, exactly what ``lowp_quant.quantize_q(sm_scale=...)`` makes
    of ``rms_norm_rope_``'s output split into heads."""
    _check(x, weight, cos, sin, num_heads, "rms_norm_rope_quant")
    if (D := x.shape[-1] // num_heads) not in (64, 128):
        raise ValueError(f"rms_norm_rope_quant: the low-precision attention takes head_dim 64 or 128, got {D}")
    return _norm_rope_quant_op(x, weight, cos, sin, num_heads, eps, sm_scale)


def _check(x, weight, cos, sin, num_heads: int, name: str) -> None:
    _, L, D = x.shape
    hd = D // num_heads
    if x.stride(-1) != 1:
        raise ValueError(f"{name} wants a contiguous last dim, got strides {x.stride()}")
    if x.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"{name} runs bf16 / fp16 activations, got {x.dtype}")
    if hd * num_heads != D or hd & (hd - 1):
        raise ValueError(f"{name}: D={D}, heads={num_heads} needs a power-of-two head dim")
    if weight.shape != (D,):
        raise ValueError(f"{name}: the norm weight must be [{D}], got {list(weight.shape)}")
    if cos is not None:
        if sin is None or cos.shape != (L, hd // 2) or sin.shape != cos.shape:
            raise ValueError(f"{name}: cos / sin must be [{L}, {hd // 2}], got cos {list(cos.shape)}")
        if cos.dtype != torch.float32 or sin.dtype != torch.float32 or cos.stride(-1) != 1 or (
            sin.stride() != cos.stride()
        ):
            raise ValueError(f"{name} wants fp32 cos / sin tables of one layout with a contiguous last dim")


@torch.library.custom_op("lightx2v_quant::rms_norm_rope_", mutates_args=("x",))
def _norm_rope_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    cos: torch.Tensor | None,
    sin: torch.Tensor | None,
    num_heads: int,
    eps: float,
) -> None:
    _launch(x, weight, cos, sin, num_heads, eps)


def _launch(x, weight, cos, sin, num_heads: int, eps: float, quant=None) -> None:
    """The kernel over x's tokens: in place, or with ``quant`` = (q8, qs, LP, mul) over LP rows per sample."""
    B, L, D = x.shape
    hd = D // num_heads
    rope = cos is not None
    q8, qs, lp, mul = quant if quant is not None else (x, x, L, 1.0)
    _norm_rope_kernel[(B * lp,)](
        x,
        weight,
        cos if rope else weight,
        sin if rope else weight,
        x,
        q8,
        qs,
        L,
        lp,
        lp,
        mul,
        x.stride(0),
        x.stride(1),
        cos.stride(0) if rope else 0,
        eps,
        H=num_heads,
        HP2=triton.next_power_of_2(num_heads),
        HD=hd,
        ROUND_W=weight.dtype == x.dtype,
        ROPE=rope,
        QUANT=quant is not None,
        num_warps=_warps(num_heads, hd),
    )


def _warps(num_heads: int, hd: int) -> int:
    """Warps of a program that holds one token's row (all heads, padded to a power of two): ~2048 elements
    per warp, 1 to 8. Wan-14B (64 x 128): 4 warps; with 8 the quantizing kernel took 0.32 instead of 0.27
    ms per 480p call on an H100, the in-place one 0.240 instead of 0.234 (benchmarks/probes/norm_rope.py)."""
    return max(1, min(8, triton.next_power_of_2(num_heads) * hd // 2048))


@_norm_rope_op.register_fake
def _(x, weight, cos, sin, num_heads, eps):
    return None


def _quant_buffers(x: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    B, L, D = x.shape
    return q_buffers(x, B, L, num_heads, D // num_heads)


@torch.library.custom_op("lightx2v_quant::rms_norm_rope_quant", mutates_args=())
def _norm_rope_quant_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    cos: torch.Tensor | None,
    sin: torch.Tensor | None,
    num_heads: int,
    eps: float,
    sm_scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    q8, qs = _quant_buffers(x, num_heads)
    _launch(x, weight, cos, sin, num_heads, eps, quant=(q8, qs, q8.shape[1], sm_scale))
    return q8, qs


@_norm_rope_quant_op.register_fake
def _(x, weight, cos, sin, num_heads, eps, sm_scale):
    return _quant_buffers(x, num_heads)


def rms_norm_rope_reference(
    x: torch.Tensor, weight: torch.Tensor, cos, sin, num_heads: int, eps: float
) -> torch.Tensor:
    """The official numerics with PyTorch ops (WanRMSNorm, then apply_rope in fp32, cast back); a new tensor."""
    from lightx2v_quant.models.wan.rope import apply_rope

    y = torch.nn.functional.rms_norm(x.float(), (x.shape[-1],), eps=eps).type_as(x) * weight
    if cos is None:
        return y.to(x.dtype)
    return apply_rope(y.unflatten(-1, (num_heads, -1)), cos, sin).to(x.dtype).flatten(2)


def SASS_CASES():  # noqa: N802 - picked up by benchmarks/triton_sass.py
    sig = {
        "x_ptr": "*bf16",
        "w_ptr": "*bf16",
        "cos_ptr": "*fp32",
        "sin_ptr": "*fp32",
        "o_ptr": "*bf16",
        "q8_ptr": "*bf16",
        "qs_ptr": "*bf16",
        "L": "i32",
        "LR": "i32",
        "LP": "i32",
        "mul": "fp32",
        "stride_xb": "i32",
        "stride_xl": "i32",
        "stride_rl": "i32",
        "eps": "fp32",
    }
    const = {"H": 40, "HP2": 64, "HD": 128, "ROUND_W": True, "ROPE": True}
    strides = ["stride_xb", "stride_xl", "stride_rl"]
    yield "rms_norm_rope_40x128", _norm_rope_kernel, sig, {**const, "QUANT": False}, {"num_warps": 4}, strides
    sig_q = {**sig, "q8_ptr": "*i8", "qs_ptr": "*fp32"}
    yield "rms_norm_rope_quant_40x128", _norm_rope_kernel, sig_q, {**const, "QUANT": True}, {"num_warps": 4}, strides
