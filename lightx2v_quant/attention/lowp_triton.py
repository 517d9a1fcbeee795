"""Low-precision attention in Triton (SageAttention-style): int8 Q.K^T, then fp8 (or bf16/fp16) P.V.

Why it stays accurate:
- K smoothing: subtracting the per-channel mean of K over the tokens changes every logit of a query row
  by the same constant (q . mean_k), which softmax ignores; what is left is centred and quantizes well.
- Q has one int8 scale per token (free in the kernel: the logit scale is a per-row factor anyway), K one
  per block of 128 keys. The softmax scale and log2(e) are folded into Q, so the kernel works in exp2.
- P = exp2(s - rowmax) lies in [0, 1]; the kernel computes 448 * P directly (log2(448) folded into the
  exponent) and casts it to fp8 e4m3; the row sums carry the same factor, so the final division
  cancels it. The row max used may be stale by up to ``lowp_quant.MAX_SLACK`` (P then stays below 448
  with that much less headroom): the Gluon kernel relies on it to skip O's rescale, and this kernel
  follows the same rule so that the two stay bit-identical. V is fp8 per channel after V smoothing (mean added back after: rows of P sum to 1).
  ``pv_fp8=False`` keeps P.V in the input dtype (only Q.K is int8): slower, more accurate.

Speed on Hopper (where the kernel is meant to run): both dots are 8-bit wgmma (int8 and fp8 need
K-major operands, hence K row-major and V^T stored [D, tokens]); the int32 logits become fp32 by a
magic-number add (an integer add and one FMA instead of a quarter-rate I2F per element); loads are
unmasked (buffers padded to 128 tokens) and only the last key block is masked.

Layouts: q, k, v, out are [B, L, H, D] (the DIT's natural layout, no transpose copies).
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from lightx2v_quant.attention import lowp_gluon, lowp_quant
from lightx2v_quant.attention.lowp_quant import MAX_SLACK, QBLOCK, QuantizedQKV

LOG2E = 1.4426950408889634
MAGIC_I = tl.constexpr(0x4B400000)  # bits of 1.5 * 2^23: float(bits + i) = 12582912 + i for |i| < 2^22
MAGIC_F = tl.constexpr(12582912.0)
LOG2_PSCALE = tl.constexpr(math.log2(448.0))  # P is computed as 448 * exp2(.): fp8 e4m3's full range
MASKED_LOGIT = tl.constexpr(-4194304)  # -2^22: below any int8 x int8 x 128 dot product
SLACK = tl.constexpr(MAX_SLACK)


@triton.jit
def _softmax_pv(
    acc,
    m_i,
    l_i,
    s,
    q_sc,
    ks_ptr,
    desc_v,
    v_row,
    v_col,
    start,
    L_K,
    QB: tl.constexpr,
    PV_FP8: tl.constexpr,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
    KEY_ORDER: tl.constexpr,
):
    """Online-softmax update of (acc, m_i, l_i) with the int32 logits ``s`` of the key block at ``start``.
    KEY_ORDER: V^T's keys are in ``lowp_quant.key_order`` (BLOCK_N = 128), P's columns are put in the same
    order before P.V (what the Gluon kernel sums, in its order)."""
    sc = q_sc * tl.load(ks_ptr + start // QB)  # [BM]: log2 units per integer unit
    if MASKED:
        valid = (start + tl.arange(0, BLOCK_N))[None, :] < L_K
        s = tl.where(valid, s, MASKED_LOGIT)
    m_new = tl.maximum(m_i, tl.max(s, 1).to(tl.float32) * sc)
    m_new = tl.where(m_new - m_i > SLACK, m_new, m_i)  # keep the max unless it grew by more than SLACK
    # float(s) * sc - m_new + log2(448) - SLACK as one FMA on the magic-number float of s
    c = MAGIC_F * sc + m_new - (LOG2_PSCALE - SLACK)
    t = (s + MAGIC_I).to(tl.float32, bitcast=True) * sc[:, None] - c[:, None]
    if MASKED:
        t = tl.where(valid, t, float("-inf"))
    p = tl.math.exp2(t)  # 448 * 2^-SLACK * P (<= 448)
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if PV_FP8:
        v = desc_v.load([v_row, start]).T  # fp8 [BN, D] from the V^T tile (tokens contiguous: K-major)
        p8 = p.to(tl.float8e4nv)
        if KEY_ORDER:  # column 8g + 2t + e -> 2 (BN / 8) t + 2g + e
            p8 = tl.reshape(tl.permute(tl.reshape(p8, [p8.shape[0], BLOCK_N // 8, 4, 2]), (0, 2, 1, 3)), p8.shape)
        acc = tl.dot(p8, v, acc)
    else:
        v = desc_v.load([v_row + start, v_col])  # [BN, D] of the original V (rows past L_K: p = 0)
        acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, m_new, l_i


@triton.jit
def _attn_fwd_kernel(
    desc_q,
    qs_ptr,
    desc_k,
    ks_ptr,
    desc_v,
    vs_ptr,
    vm_ptr,
    o_ptr,
    L_Q,
    L_K,
    LQP,
    LKP,
    H,
    stride_ob,
    stride_ol,
    stride_oh,
    D: tl.constexpr,
    QB: tl.constexpr,
    PV_FP8: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    KEY_ORDER: tl.constexpr = False,
):
    tl.static_assert(not KEY_ORDER or BLOCK_N == QB, "V^T's key order is defined per block of 128 keys")
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    q = desc_q.load([bh * LQP + pid_m * BLOCK_M, 0])  # int8 [BM, D]
    q_sc = tl.load(qs_ptr + bh * LQP + offs_m)  # [BM]
    k_row = bh * LKP
    ks_base = ks_ptr + bh * (LKP // QB)
    if PV_FP8:
        v_row = bh * D  # V^T is [BH * D, LKP]
        v_col = 0
    else:
        v_row = b * L_K  # V is [B * L_K, H * D]
        v_col = h * D

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    n_full = L_K // BLOCK_N
    for j in range(0, n_full):
        s = tl.dot(q, desc_k.load([k_row + j * BLOCK_N, 0]).T)  # int32 [BM, BN], exact
        acc, m_i, l_i = _softmax_pv(
            acc,
            m_i,
            l_i,
            s,
            q_sc,
            ks_base,
            desc_v,
            v_row,
            v_col,
            j * BLOCK_N,
            L_K,
            QB,
            PV_FP8,
            BLOCK_N,
            False,
            KEY_ORDER,
        )
    if n_full * BLOCK_N < L_K:  # ragged last block: the only one with masks
        s = tl.dot(q, desc_k.load([k_row + n_full * BLOCK_N, 0]).T)
        acc, m_i, l_i = _softmax_pv(
            acc,
            m_i,
            l_i,
            s,
            q_sc,
            ks_base,
            desc_v,
            v_row,
            v_col,
            n_full * BLOCK_N,
            L_K,
            QB,
            PV_FP8,
            BLOCK_N,
            True,
            KEY_ORDER,
        )

    out = acc / l_i[:, None]
    offs_d = tl.arange(0, D)
    if PV_FP8:  # undo V's per-channel scale, add back its mean
        out = out * tl.load(vs_ptr + bh * D + offs_d)[None, :] + tl.load(vm_ptr + bh * D + offs_d)[None, :]
    o_ptrs = o_ptr + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ol + offs_d[None, :]
    tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=offs_m[:, None] < L_Q)


# (BLOCK_M, BLOCK_N, num_warps, num_stages, maxnreg or 0). Register footprints decide how many programs
# share an SM, and co-resident programs are how the softmax of one overlaps the tensor-core work of
# another (Triton does not warp-specialize this loop on Hopper). From ptxas for sm_90a (Triton 3.6,
# benchmarks/triton_sass.py): 128x64/8 warps fits 128 registers without spills -> 2 programs (16 warps)
# per SM; 64x128/4 warps at 168 -> 3 per SM; BLOCK_N=128 does not fit 128 registers (spills).
CONFIGS = [
    (128, 64, 8, 3, 128),
    (128, 64, 8, 2, 128),
    (64, 128, 4, 2, 168),
    (64, 128, 4, 3, 0),
    (64, 64, 4, 3, 128),
    (128, 128, 8, 2, 0),
]
_ENV_CONFIG = "LIGHTX2V_QUANT_ATTN_CONFIG"  # "BM,BN,warps,stages,maxnreg": pin one config, skip autotuning


def _set_block_shapes(nargs: dict) -> None:
    """Autotune pre-hook: the TMA descriptors' block shapes follow the config's tile sizes."""
    bm, bn, d = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["D"]
    nargs["desc_q"].block_shape = [bm, d]
    nargs["desc_k"].block_shape = [bn, d]
    nargs["desc_v"].block_shape = [d, bn] if nargs["PV_FP8"] else [bn, d]


def _configs() -> list[triton.Config]:
    pinned = os.environ.get(_ENV_CONFIG)
    chosen = [tuple(int(v) for v in pinned.split(","))] if pinned else CONFIGS
    return [
        triton.Config(
            {"BLOCK_M": bm, "BLOCK_N": bn},
            num_warps=w,
            num_stages=s,
            maxnreg=r or None,
            pre_hook=_set_block_shapes,
        )
        for bm, bn, w, s, r in chosen
    ]


def _prune(configs, named_args, **kwargs):
    """V^T in key order: only 128-key blocks."""
    if not kwargs.get("KEY_ORDER"):
        return configs
    return [c for c in configs if c.kwargs["BLOCK_N"] == QBLOCK]


_attn_fwd = triton.autotune(
    configs=_configs(), key=["L_Q", "L_K", "D", "PV_FP8", "KEY_ORDER"], prune_configs_by={"early_config_prune": _prune}
)(_attn_fwd_kernel)


def check_one(x: torch.Tensor, name: str) -> None:
    """One clear error for a q / k / v the kernel does not take: [B, L, H, 64 or 128], bf16 / fp16,
    contiguous head dim, non-empty."""
    if x.dim() != 4 or x.shape[1] == 0:
        raise ValueError(f"low-precision attention wants {name} [B, L, H, D] of a non-empty sequence; got {list(x.shape)}")
    if x.shape[-1] not in (64, 128):
        raise ValueError(f"low-precision attention supports head_dim 64 or 128, got {x.shape[-1]}")
    if x.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"low-precision attention takes bf16 or fp16 q, k, v; got {name} {x.dtype}")
    if x.stride(-1) != 1:
        raise ValueError("low-precision attention needs a contiguous head dim (stride(-1) == 1)")


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """One clear error for shapes / dtypes the kernel does not take."""
    if (
        q.dim() != 4
        or k.shape != v.shape
        or k.dim() != 4
        or q.shape[0] != k.shape[0]
        or q.shape[2:] != k.shape[2:]
    ):
        raise ValueError(
            f"low-precision attention wants q [B, Lq, H, D] and k, v [B, Lk, H, D]; got q "
            f"{list(q.shape)}, k {list(k.shape)}, v {list(v.shape)}"
        )
    for t, name in ((q, "q"), (k, "k"), (v, "v")):
        check_one(t, name)
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(
            f"low-precision attention takes bf16 or fp16 q, k, v of one dtype; got {q.dtype}, "
            f"{k.dtype}, {v.dtype}"
        )


def lowp_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pv_fp8: bool = True) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v for q [B, Lq, H, D], k / v [B, Lk, H, D]; [B, Lq, H, D] in q.dtype.

    No mask (Wan attends to every key). ``pv_fp8=False`` keeps P.V in the input dtype. The stages
    (``quantize_q`` / ``quantize_k`` / ``quantize_v`` / ``attend``) are public so that the DIT can free
    each bf16 input as soon as it is quantized (models/wan/dit_fused.py).
    """
    check_inputs(q, k, v)
    vq = quantize_v(v) if pv_fp8 else v
    return attend(quantize_q(q), quantize_k(k), vq, q.shape[1], k.shape[1], q.shape[2], q.dtype)


def quantize_q(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 1: q [B, L, H, D] -> (int8 q, per-token scales), softmax scale and log2(e) folded in."""
    check_one(q, "q")
    return _quant_q_op(q)


def quantize_k(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 2: k [B, L, H, D] -> (int8 smoothed k, per-128-key scales)."""
    check_one(k, "k")
    return _quant_k_op(k)


def quantize_v(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stage 3 (fp8 P.V only): v [B, L, H, D] -> (fp8 smoothed V^T, channel means, channel scales)."""
    check_one(v, "v")
    return _quant_v_op(v)


def attend(
    q: tuple[torch.Tensor, torch.Tensor],
    k: tuple[torch.Tensor, torch.Tensor],
    v: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | torch.Tensor,
    lq: int,
    lk: int,
    heads: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Stage 4: the attention kernel on the quantized q / k and either quantized V (fp8 P.V) or the
    original v [B, Lk, H, D] (P.V in its dtype). Returns [B, lq, heads, D] in ``out_dtype``."""
    vq = (v, None, None) if isinstance(v, torch.Tensor) else v
    return _attend_op(*q, *k, *vq, lq, lk, heads, out_dtype)


# Custom ops: torch.compile treats each stage as one opaque call (no tracing into autotuning / TMA
# descriptors) and frees each stage's inputs after their last use, as eager code does with `del`.
@torch.library.custom_op("lightx2v_quant::lowp_quant_q", mutates_args=())
def _quant_q_op(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return lowp_quant.quantize_q(q, sm_scale=q.shape[-1] ** -0.5 * LOG2E)


@torch.library.custom_op("lightx2v_quant::lowp_quant_k", mutates_args=())
def _quant_k_op(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return lowp_quant.quantize_k(k)


@torch.library.custom_op("lightx2v_quant::lowp_quant_v", mutates_args=())
def _quant_v_op(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # V^T in the Gluon kernel's key order exactly when the attention over these keys will run on it
    return lowp_quant.quantize_v(v, key_order=use_gluon(v.device, v.shape[-1], v.shape[1]))


@torch.library.custom_op("lightx2v_quant::lowp_attend", mutates_args=())
def _attend_op(
    q8: torch.Tensor,
    qs: torch.Tensor,
    k8: torch.Tensor,
    ks: torch.Tensor,
    v: torch.Tensor,
    vm: torch.Tensor | None,
    vs: torch.Tensor | None,
    lq: int,
    lk: int,
    heads: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """vm / vs None: v is the original [B, Lk, H, D] (P.V in its dtype); else the fp8 V^T of quantize_v."""
    fp8 = vm is not None
    order = fp8 and use_gluon(q8.device, q8.shape[-1], lk)  # as _quant_v_op decided for these keys
    qq = QuantizedQKV(q8, qs, k8, ks, v if fp8 else None, vm, vs, v_key_order=order)
    return _launch(qq, None if fp8 else v, lq, lk, heads, out_dtype)


def _fake_quant(x: torch.Tensor, per_token: bool) -> tuple[torch.Tensor, torch.Tensor]:
    B, L, H, D = x.shape
    lp = triton.cdiv(L, QBLOCK) * QBLOCK
    scales = x.new_empty(B * H, lp if per_token else lp // QBLOCK, dtype=torch.float32)
    return x.new_empty(B * H, lp, D, dtype=torch.int8), scales


_quant_q_op.register_fake(lambda q: _fake_quant(q, True))
_quant_k_op.register_fake(lambda k: _fake_quant(k, False))


@_quant_v_op.register_fake
def _(v):
    B, L, H, D = v.shape
    lp = triton.cdiv(L, QBLOCK) * QBLOCK
    return (
        v.new_empty(B * H, D, lp, dtype=torch.float8_e4m3fn),
        v.new_empty(B * H, D, dtype=torch.float32),
        v.new_empty(B * H, D, dtype=torch.float32),
    )


@_attend_op.register_fake
def _(q8, qs, k8, ks, v, vm, vs, lq, lk, heads, out_dtype):
    return q8.new_empty(q8.shape[0] // heads, lq, heads, q8.shape[2], dtype=out_dtype)


def lowp_attention_config(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pv_fp8: bool, config: tuple[int, int, int, int, int]
) -> torch.Tensor:
    """For benchmarks: one pinned (BLOCK_M, BLOCK_N, num_warps, num_stages, maxnreg) config, no autotuning."""
    check_inputs(q, k, v)
    _, Lq, H, D = q.shape
    qq = lowp_quant.quantize_qkv(q, k, v, sm_scale=D**-0.5 * LOG2E, pv_fp8=pv_fp8)
    return _launch(qq, None if pv_fp8 else v, Lq, k.shape[1], H, q.dtype, config)


_ENV_KERNEL = "LIGHTX2V_QUANT_ATTN_KERNEL"  # "triton": never the Gluon kernel (comparisons, debugging)


GLUON_MIN_KEYS = 4096  # shorter key sequences (cross-attention's 512 text tokens) stay on this module's kernel


def use_gluon(device: torch.device, head_dim: int, keys: int) -> bool:
    """Whether fp8 P.V attention runs on the Gluon ping-pong kernel (``lowp_gluon``: Hopper with Gluon,
    head_dim 128, at least GLUON_MIN_KEYS keys) rather than on this module's kernel. On an H100 at
    Wan-14B's 480p self-attention (32,760 tokens x 40 heads) it takes 24.8 ms against 28.4 ms; over
    512 keys its start-up (warp specialization, a 192-row Q tile) makes it slower (0.73 vs 0.59 ms).
    ``LIGHTX2V_QUANT_ATTN_KERNEL=triton`` or a pinned ``LIGHTX2V_QUANT_ATTN_CONFIG`` keeps this module's
    kernel."""
    if os.environ.get(_ENV_KERNEL, "").lower() == "triton" or os.environ.get(_ENV_CONFIG):
        return False
    return head_dim == 128 and keys >= GLUON_MIN_KEYS and lowp_gluon.supported(device, head_dim)


def _launch(
    qq: QuantizedQKV,
    v_orig: torch.Tensor | None,
    Lq: int,
    Lk: int,
    H: int,
    out_dtype: torch.dtype,
    config: tuple[int, int, int, int, int] | None = None,
) -> torch.Tensor:
    """The attention kernel on quantized inputs; ``v_orig`` [B, Lk, H, D] when P.V runs in its dtype."""
    pv_fp8 = v_orig is None
    BH, lqp, D = qq.q.shape
    if pv_fp8 and config is None and use_gluon(qq.q.device, D, Lk):
        return lowp_gluon.launch(qq, Lq, Lk, H, out_dtype)
    B, lkp = BH // H, qq.k.shape[1]
    out = torch.empty(B, Lq, H, D, device=qq.q.device, dtype=out_dtype)
    # Tiles are read through TMA descriptors of 2-D views; block shapes are set per config (pre-hook).
    desc_q = TensorDescriptor.from_tensor(qq.q.view(B * H * lqp, D), [64, D])
    desc_k = TensorDescriptor.from_tensor(qq.k.view(B * H * lkp, D), [64, D])
    if pv_fp8:
        desc_v = TensorDescriptor.from_tensor(qq.v.view(B * H * D, lkp), [D, 64])
        vs, vm = qq.v_scale, qq.v_mean
    else:
        v2 = v_orig.reshape(B * Lk, H * D)  # a view for the DIT's [B, L, H*D] projections, else one copy
        desc_v = TensorDescriptor.from_tensor(v2, [64, D])
        vs = vm = qq.q_scale  # unused on this path
    args = (
        desc_q,
        qq.q_scale,
        desc_k,
        qq.k_scale,
        desc_v,
        vs,
        vm,
        out,
        Lq,
        Lk,
        lqp,
        lkp,
        H,
        out.stride(0),
        out.stride(1),
        out.stride(2),
    )
    order = pv_fp8 and qq.v_key_order  # V^T's keys in key_order (quantize_v(key_order=True))
    if out.is_cuda and config is None:
        grid = lambda meta: (triton.cdiv(Lq, meta["BLOCK_M"]), B * H)  # noqa: E731
        _attn_fwd[grid](*args, D=D, QB=QBLOCK, PV_FP8=pv_fp8, KEY_ORDER=order)
        return out
    # One fixed config: the pinned one, or under Triton's CPU interpreter (TRITON_INTERPRET=1, tests),
    # which cannot autotune, 64-row tiles of 64 keys (128 for V^T in key order).
    if not out.is_cuda:
        config = (64, QBLOCK if order else 64, 4, 3, 0)
    bm, bn, warps, stages, maxnreg = config
    if order and bn != QBLOCK:
        raise ValueError(f"V^T in key order needs 128-key blocks; the pinned config has BLOCK_N={bn}")
    meta = {"BLOCK_M": bm, "BLOCK_N": bn, "D": D, "PV_FP8": pv_fp8, "desc_q": desc_q, "desc_k": desc_k, "desc_v": desc_v}
    _set_block_shapes(meta)
    _attn_fwd_kernel[(triton.cdiv(Lq, bm), B * H)](
        *args,
        D=D,
        QB=QBLOCK,
        PV_FP8=pv_fp8,
        BLOCK_M=bm,
        BLOCK_N=bn,
        KEY_ORDER=order,
        num_warps=warps,
        num_stages=stages,
        **({"maxnreg": maxnreg} if maxnreg else {}),
    )
    return out
