"""Fused q/k RMSNorm + 3D RoPE of the Wan DIT self-attention, in Triton: one pass over q and over k.

The official path runs ``rms_norm(x.float()).type_as(x) * weight``, splits heads, upcasts to the RoPE
dtype, rotates adjacent channel pairs with 6 elementwise ops and casts back: ~10 passes over each
[tokens, dim] tensor. The kernel reads each token's row once (all heads: the RMS spans every head),
keeps the same roundings (normalized value rounded to the input dtype, times the weight rounded when
the weight is in the input dtype) and rotates in fp32, so it matches the official bf16 path to fp32
rounding of the rotation (float64 for fp32 runs is not offered here).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _qk_norm_rope_kernel(
    q_ptr,
    k_ptr,
    wq_ptr,
    wk_ptr,
    cos_ptr,
    sin_ptr,
    qo_ptr,
    ko_ptr,
    L,
    stride_xb,
    stride_xl,
    stride_rl,
    eps,
    H: tl.constexpr,
    HP2: tl.constexpr,
    HD: tl.constexpr,
    ROUND_W: tl.constexpr,
):
    """Program (token, 0) normalizes + rotates the q row of that token, (token, 1) the k row."""
    row = tl.program_id(0)
    which = tl.program_id(1)
    b = row // L
    t = row % L
    hh = tl.arange(0, HP2)
    dd = tl.arange(0, HD)
    mask = hh[:, None] < H
    offs = hh[:, None] * HD + dd[None, :]  # [HP2, HD]: heads x head dim of one token
    base = b * stride_xb + t * stride_xl
    if which == 0:
        x_ptr, w_ptr, o_ptr = q_ptr, wq_ptr, qo_ptr
    else:
        x_ptr, w_ptr, o_ptr = k_ptr, wk_ptr, ko_ptr
    x = tl.load(x_ptr + base + offs, mask=mask, other=0.0)
    xf = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(tl.sum(xf * xf, 1), 0) / (H * HD) + eps)
    y = (xf * rstd).to(x.dtype).to(tl.float32)  # .type_as(x) of the official RMSNorm
    y = y * tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if ROUND_W:  # weight in the run dtype: the product is rounded to it too
        y = y.to(x.dtype).to(tl.float32)
    # rotate pairs (2i, 2i+1) of every head by the token's angles (the same for all heads)
    a, c = tl.split(tl.reshape(y, [HP2, HD // 2, 2]))
    half = tl.arange(0, HD // 2)
    cs = tl.load(cos_ptr + t * stride_rl + half)[None, :]
    sn = tl.load(sin_ptr + t * stride_rl + half)[None, :]
    out = tl.reshape(tl.join(a * cs - c * sn, a * sn + c * cs), [HP2, HD])
    tl.store(o_ptr + base + offs, out.to(x.dtype), mask=mask)


def qk_norm_rope(
    q: torch.Tensor,
    k: torch.Tensor,
    wq: torch.Tensor,
    wk: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    num_heads: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k [B, L, D] (bf16 / fp16) -> RMSNorm(weight) over D, then RoPE per head; new [B, L, D] tensors.

    cos / sin [L, head_dim/2] fp32 angles' cosines / sines for the tokens in order."""
    B, L, D = q.shape
    hd = D // num_heads
    if k.shape != q.shape or k.stride() != q.stride() or q.stride(-1) != 1:
        raise ValueError(
            f"qk_norm_rope wants q and k of one shape and layout, got {list(q.shape)} {q.stride()} "
            f"and {list(k.shape)} {k.stride()}"
        )
    if q.dtype not in (torch.bfloat16, torch.float16) or k.dtype != q.dtype:
        raise ValueError(f"qk_norm_rope runs bf16 / fp16 activations, got {q.dtype}, {k.dtype}")
    if hd * num_heads != D or hd & (hd - 1) or cos.shape != (L, hd // 2) or sin.shape != cos.shape:
        raise ValueError(
            f"qk_norm_rope: D={D}, heads={num_heads} needs a power-of-two head dim and cos/sin "
            f"[{L}, {hd // 2}], got cos {list(cos.shape)}"
        )
    if (
        cos.dtype != torch.float32
        or sin.dtype != torch.float32
        or cos.stride(-1) != 1
        or sin.stride() != cos.stride()
    ):
        raise ValueError("qk_norm_rope wants fp32 cos / sin tables of one layout with a contiguous last dim")
    if wq.dtype != wk.dtype:
        raise ValueError("norm_q and norm_k weights must have one dtype")
    return _qk_norm_rope_op(q, k, wq, wk, cos, sin, num_heads, eps)


@torch.library.custom_op("lightx2v_quant::qk_norm_rope", mutates_args=())
def _qk_norm_rope_op(
    q: torch.Tensor,
    k: torch.Tensor,
    wq: torch.Tensor,
    wk: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    num_heads: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    B, L, D = q.shape
    hd = D // num_heads
    qo, ko = torch.empty_like(q), torch.empty_like(k)
    _qk_norm_rope_kernel[(B * L, 2)](
        q,
        k,
        wq,
        wk,
        cos,
        sin,
        qo,
        ko,
        L,
        q.stride(0),
        q.stride(1),
        cos.stride(0),
        eps,
        H=num_heads,
        HP2=triton.next_power_of_2(num_heads),
        HD=hd,
        ROUND_W=wq.dtype == q.dtype,
        num_warps=max(1, min(8, triton.next_power_of_2(num_heads) * hd // 1024)),
    )
    return qo, ko


@_qk_norm_rope_op.register_fake
def _(q, k, wq, wk, cos, sin, num_heads, eps):
    return torch.empty_like(q), torch.empty_like(k)


def qk_norm_rope_reference(
    q, k, wq, wk, cos, sin, num_heads: int, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official numerics with PyTorch ops (WanRMSNorm, then apply_rope in fp32, cast back)."""
    from lightx2v_quant.models.wan.rope import apply_rope

    def one(x, w):
        y = torch.nn.functional.rms_norm(x.float(), (x.shape[-1],), eps=eps).type_as(x) * w
        return apply_rope(y.unflatten(-1, (num_heads, -1)), cos, sin).to(x.dtype).flatten(2)

    return one(q, wq), one(k, wk)


def SASS_CASES():  # noqa: N802 - picked up by benchmarks/triton_sass.py
    sig = {
        "q_ptr": "*bf16",
        "k_ptr": "*bf16",
        "wq_ptr": "*bf16",
        "wk_ptr": "*bf16",
        "cos_ptr": "*fp32",
        "sin_ptr": "*fp32",
        "qo_ptr": "*bf16",
        "ko_ptr": "*bf16",
        "L": "i32",
        "stride_xb": "i32",
        "stride_xl": "i32",
        "stride_rl": "i32",
        "eps": "fp32",
    }
    const = {"H": 40, "HP2": 64, "HD": 128, "ROUND_W": True}
    yield (
        "qk_norm_rope_40x128",
        _qk_norm_rope_kernel,
        sig,
        const,
        {"num_warps": 8},
        ["stride_xb", "stride_xl", "stride_rl"],
    )
