"""Low-precision attention in Triton (SageAttention-style): int8 Q.K^T with K smoothing, fp8 (or bf16) P.V.

Why it stays accurate:
- K smoothing: subtracting the per-channel mean of K over the tokens changes every logit of a query row
  by the same constant (q . mean_k), which softmax ignores; what is left is centred and quantizes well.
- Q and K are quantized per block of rows (one scale per 128 queries / per key block), so a loud token
  only coarsens its own block. The softmax scale and log2(e) are folded into Q before quantizing, so the
  kernel works in exp2 directly.
- P = exp2(s - rowmax) lies in [0, 1]: it is multiplied by 448 and cast to fp8 e4m3 with a static scale.
  V is fp8 with one scale per (batch, head, channel). The softmax statistics (max, sum) stay fp32.

Layouts: q, k, v, out are [B, L, H, D] (the DIT's natural layout, no transpose); the quantized copies
are [B, H, L, D] so that the main loop reads contiguous tiles, except fp8 V, stored transposed
[B, H, D, L] because Hopper's fp8 wgmma needs both operands K-major.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
FP8_MAX = 448.0
QBLOCK = 128  # rows per Q / K quantization block; the main kernel's BLOCK_M and BLOCK_N divide it


@triton.jit
def _quant_rows_int8(
    x_ptr, mean_ptr, out_ptr, scale_ptr,
    L, H, stride_xb, stride_xl, stride_xh,
    mul,  # folded multiplier (softmax scale * log2 e for Q, 1 for K)
    SUB_MEAN: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr,
):
    """One program quantizes BLOCK rows of one (batch, head) to int8 with a single scale."""
    pid_l = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = pid_l * BLOCK + tl.arange(0, BLOCK)
    cols = tl.arange(0, D)
    mask = rows[:, None] < L
    x = tl.load(x_ptr + b * stride_xb + h * stride_xh + rows[:, None] * stride_xl + cols[None, :],
                mask=mask, other=0.0).to(tl.float32)
    if SUB_MEAN:
        x = x - tl.load(mean_ptr + bh * D + cols)[None, :]
        x = tl.where(mask, x, 0.0)
    x = x * mul
    amax = tl.maximum(tl.max(tl.max(tl.abs(x), axis=1), axis=0), 1e-8)
    scale = amax / 127.0
    q = x / scale
    q = tl.where(q >= 0, tl.floor(q + 0.5), tl.ceil(q - 0.5))  # round half away from zero
    q = tl.minimum(tl.maximum(q, -127.0), 127.0).to(tl.int8)
    tl.store(out_ptr + bh * L * D + rows[:, None] * D + cols[None, :], q, mask=mask)
    tl.store(scale_ptr + bh * tl.num_programs(0) + pid_l, scale)


@triton.jit
def _quant_rows_fp8(
    x_ptr, mean_ptr, scale_ptr, out_ptr,
    L, LP, H, stride_xb, stride_xl, stride_xh,
    D: tl.constexpr, BLOCK: tl.constexpr,
):
    """(V - mean) to fp8 with per-(batch, head, channel) mean and scale computed beforehand."""
    pid_l = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = pid_l * BLOCK + tl.arange(0, BLOCK)
    cols = tl.arange(0, D)
    mask = rows[:, None] < L
    x = tl.load(x_ptr + b * stride_xb + h * stride_xh + rows[:, None] * stride_xl + cols[None, :],
                mask=mask, other=0.0).to(tl.float32)
    x = x - tl.load(mean_ptr + bh * D + cols)[None, :]
    inv = 1.0 / tl.load(scale_ptr + bh * D + cols)
    q = tl.minimum(tl.maximum(x * inv[None, :], -FP8_MAX), FP8_MAX).to(tl.float8e4nv)
    # stored transposed, [D, LP] per (batch, head): fp8 wgmma wants P.V's B operand K-major
    tl.store(out_ptr + bh * D * LP + cols[None, :] * LP + rows[:, None], q, mask=mask)


def _configs():
    out = []
    for bm, bn, warps, stages in [(128, 64, 4, 3), (128, 128, 8, 3), (128, 64, 8, 4), (128, 128, 8, 4),
                                  (64, 64, 4, 3), (128, 128, 4, 3)]:
        out.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages))
    return out


@triton.autotune(configs=_configs(), key=["L_Q", "L_K", "D", "PV_FP8"])
@triton.jit
def _attn_fwd(
    q_ptr, qs_ptr, k_ptr, ks_ptr, v_ptr, vs_ptr, vm_ptr, o_ptr,
    L_Q, L_K, LKP, H, stride_ob, stride_ol, stride_oh,
    NQB, NKB,  # number of Q / K quantization blocks per (batch, head)
    D: tl.constexpr, QB: tl.constexpr, PV_FP8: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    offs_n = tl.arange(0, BLOCK_N)

    q = tl.load(q_ptr + bh * L_Q * D + offs_m[:, None] * D + offs_d[None, :], mask=offs_m[:, None] < L_Q, other=0)
    q_scale = tl.load(qs_ptr + bh * NQB + (pid_m * BLOCK_M) // QB)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    k_base = k_ptr + bh * L_K * D
    v_base = v_ptr + bh * LKP * D
    for start_n in range(0, L_K, BLOCK_N):
        cols = start_n + offs_n
        k = tl.load(k_base + cols[:, None] * D + offs_d[None, :], mask=cols[:, None] < L_K, other=0)  # [BN, D]
        k_scale = tl.load(ks_ptr + bh * NKB + start_n // QB)
        s = tl.dot(q, tl.trans(k)).to(tl.float32) * (q_scale * k_scale)  # logits already in log2 units
        s = tl.where(cols[None, :] < L_K, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if PV_FP8:  # V^T stored [D, LKP]: load the [BN, D] tile with the token axis contiguous
            v = tl.load(v_base + cols[:, None] + offs_d[None, :] * LKP, mask=cols[:, None] < L_K, other=0.0)
            acc = tl.dot((p * FP8_MAX).to(tl.float8e4nv), v, acc)
        else:
            v = tl.load(v_base + cols[:, None] * D + offs_d[None, :], mask=cols[:, None] < L_K, other=0.0)
            acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new

    out = acc / l_i[:, None]
    if PV_FP8:  # undo P's static scale and V's per-channel scale, add back V's mean (rows of P sum to 1)
        v_scale = tl.load(vs_ptr + bh * D + offs_d) / FP8_MAX
        out = out * v_scale[None, :] + tl.load(vm_ptr + bh * D + offs_d)[None, :]
    o_ptrs = o_ptr + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ol + offs_d[None, :]
    tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=offs_m[:, None] < L_Q)


def quantize_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pv_fp8: bool = True):
    """[B, L, H, D] q/k/v -> int8 q, k (K smoothed), v fp8 (V smoothed) or as given, in [B, H, L, D],
    with their scales (and V's mean)."""
    B, Lq, H, D = q.shape
    Lk = k.shape[1]
    sm = (1.0 / math.sqrt(D)) * LOG2E
    nqb, nkb = triton.cdiv(Lq, QBLOCK), triton.cdiv(Lk, QBLOCK)
    q8 = torch.empty(B, H, Lq, D, device=q.device, dtype=torch.int8)
    k8 = torch.empty(B, H, Lk, D, device=q.device, dtype=torch.int8)
    qs = torch.empty(B * H, nqb, device=q.device, dtype=torch.float32)
    ks = torch.empty(B * H, nkb, device=q.device, dtype=torch.float32)
    k_mean = k.float().mean(dim=1).contiguous()  # [B, H, D]
    _quant_rows_int8[(nqb, B * H)](q, k_mean, q8, qs, Lq, H, q.stride(0), q.stride(1), q.stride(2), sm,
                                   SUB_MEAN=False, D=D, BLOCK=QBLOCK)
    _quant_rows_int8[(nkb, B * H)](k, k_mean, k8, ks, Lk, H, k.stride(0), k.stride(1), k.stride(2), 1.0,
                                   SUB_MEAN=True, D=D, BLOCK=QBLOCK)
    if pv_fp8:
        vf = v.float()
        vm = vf.mean(dim=1)  # [B, H, D]: V smoothing, like K's
        vs = ((vf - vm[:, None]).abs().amax(dim=1).clamp(min=1e-8) / FP8_MAX).contiguous()
        del vf
        lkp = triton.cdiv(Lk, 16) * 16  # 16-byte aligned rows
        vq = torch.empty(B, H, D, lkp, device=q.device, dtype=torch.float8_e4m3fn)
        _quant_rows_fp8[(nkb, B * H)](v, vm.contiguous(), vs, vq, Lk, lkp, H, v.stride(0), v.stride(1),
                                      v.stride(2), D=D, BLOCK=QBLOCK)
    else:
        vm = vs = torch.zeros(1, device=q.device, dtype=torch.float32)  # unused
        vq = v.transpose(1, 2).contiguous()  # P.V in the input dtype (bf16 / fp16)
    return q8, qs, k8, ks, vq, vs, vm


def lowp_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pv_fp8: bool = True) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v for q [B, Lq, H, D], k/v [B, Lk, H, D]; returns [B, Lq, H, D] in q.dtype.

    No mask (Wan attends to every key). ``pv_fp8=False`` keeps P.V in bf16 (int8 Q.K only).
    """
    if q.dim() != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"lowp_attention wants q [B,Lq,H,D] and k, v [B,Lk,H,D]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    B, Lq, H, D = q.shape
    if D not in (64, 128):
        raise ValueError(f"lowp_attention supports head_dim 64 or 128, got {D}")
    q8, qs, k8, ks, vq, vs, vm = quantize_qkv(q, k, v, pv_fp8)
    out = torch.empty_like(q)
    lkp = vq.shape[-1] if pv_fp8 else k.shape[1]
    args = (q8, qs, k8, ks, vq, vs, vm, out, Lq, k.shape[1], lkp, H,
            out.stride(0), out.stride(1), out.stride(2), qs.shape[1], ks.shape[1])
    if q.is_cuda:
        grid = lambda meta: (triton.cdiv(Lq, meta["BLOCK_M"]), B * H)  # noqa: E731
        _attn_fwd[grid](*args, D=D, QB=QBLOCK, PV_FP8=pv_fp8)
    else:  # Triton's CPU interpreter (TRITON_INTERPRET=1, tests) cannot autotune: one fixed config
        _attn_fwd.fn[(triton.cdiv(Lq, 64), B * H)](*args, D=D, QB=QBLOCK, PV_FP8=pv_fp8, BLOCK_M=64, BLOCK_N=64)
    return out
