"""Frozen copy of ``lightx2v_quant/attention/lowp_quant.py`` as of commit e265cd8 (before the prologue was
made bandwidth-bound): the baseline that ``attn_prologue.py`` times and compares bytes against. Not used
by the package."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

QBLOCK = 128  # tokens per K scale block and padding unit of every buffer
FP8_MAX = tl.constexpr(448.0)
AMAX_EPS = tl.constexpr(1e-8)


@triton.jit
def _load_tile(x_ptr, b, h, rows, L, stride_b, stride_l, stride_h, D: tl.constexpr):
    """[BLOCK, D] fp32 rows of one (batch, head); zeros past L."""
    cols = tl.arange(0, D)
    ptrs = x_ptr + b * stride_b + h * stride_h + rows[:, None] * stride_l + cols[None, :]
    return tl.load(ptrs, mask=rows[:, None] < L, other=0.0).to(tl.float32)


@triton.jit
def _stats_kernel(
    x_ptr,
    sum_ptr,
    min_ptr,
    max_ptr,
    L,
    H,
    stride_b,
    stride_l,
    stride_h,
    ROWS,
    D: tl.constexpr,
    BLOCK: tl.constexpr,
    MINMAX: tl.constexpr,
):
    """Partial per-channel sum (and min / max) over ROWS tokens of one (batch, head): [BH, NSPLIT, D]."""
    split = tl.program_id(0)
    bh = tl.program_id(1)
    nsplit = tl.num_programs(0)
    b = bh // H
    h = bh % H
    start = split * ROWS
    end = tl.minimum(start + ROWS, L)
    acc = tl.zeros([D], tl.float32)
    lo = tl.full([D], float("inf"), tl.float32)
    hi = tl.full([D], float("-inf"), tl.float32)
    for r in range(start, end, BLOCK):
        rows = r + tl.arange(0, BLOCK)
        x = _load_tile(x_ptr, b, h, rows, end, stride_b, stride_l, stride_h, D)
        acc += tl.sum(x, 0)
        if MINMAX:
            valid = rows[:, None] < end
            lo = tl.minimum(lo, tl.min(tl.where(valid, x, float("inf")), 0))
            hi = tl.maximum(hi, tl.max(tl.where(valid, x, float("-inf")), 0))
    out = (bh * nsplit + split) * D + tl.arange(0, D)
    tl.store(sum_ptr + out, acc)
    if MINMAX:
        tl.store(min_ptr + out, lo)
        tl.store(max_ptr + out, hi)


@triton.jit
def _channel_mean(sum_ptr, bh, L, NSPLIT, NSPLIT_P2: tl.constexpr, D: tl.constexpr):
    s = tl.arange(0, NSPLIT_P2)
    ptrs = sum_ptr + (bh * NSPLIT + s[:, None]) * D + tl.arange(0, D)[None, :]
    return tl.sum(tl.load(ptrs, mask=s[:, None] < NSPLIT, other=0.0), 0) / L


@triton.jit
def _quant_q_kernel(
    x_ptr,
    out_ptr,
    scale_ptr,
    L,
    LP,
    H,
    stride_b,
    stride_l,
    stride_h,
    mul,
    D: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """int8 Q with one scale per token; ``mul`` (softmax scale * log2 e) is folded in first."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    rows = pid * BLOCK + tl.arange(0, BLOCK)
    x = _load_tile(x_ptr, bh // H, bh % H, rows, L, stride_b, stride_l, stride_h, D) * mul
    amax = tl.maximum(tl.max(tl.abs(x), 1), AMAX_EPS)  # [BLOCK]
    inv = 127.0 / amax
    y = x * inv[:, None]
    q = tl.where(y >= 0, y + 0.5, y - 0.5).to(tl.int8)  # round half away from zero (truncating cast)
    tl.store(out_ptr + (bh * LP + rows[:, None]) * D + tl.arange(0, D)[None, :], q)
    tl.store(scale_ptr + bh * LP + rows, amax / 127.0)


@triton.jit
def _quant_k_kernel(
    x_ptr,
    sum_ptr,
    out_ptr,
    scale_ptr,
    L,
    LP,
    H,
    stride_b,
    stride_l,
    stride_h,
    NSPLIT,
    NSPLIT_P2: tl.constexpr,
    D: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """int8 (K - channel mean of K) with one scale per block of BLOCK keys."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    rows = pid * BLOCK + tl.arange(0, BLOCK)
    x = _load_tile(x_ptr, bh // H, bh % H, rows, L, stride_b, stride_l, stride_h, D)
    mean = _channel_mean(sum_ptr, bh, L, NSPLIT, NSPLIT_P2, D)
    x = tl.where(rows[:, None] < L, x - mean[None, :], 0.0)
    amax = tl.maximum(tl.max(tl.max(tl.abs(x), 1), 0), AMAX_EPS)
    y = x * (127.0 / amax)
    q = tl.where(y >= 0, y + 0.5, y - 0.5).to(tl.int8)
    tl.store(out_ptr + (bh * LP + rows[:, None]) * D + tl.arange(0, D)[None, :], q)
    tl.store(scale_ptr + bh * (LP // BLOCK) + pid, amax / 127.0)


@triton.jit
def _quant_v_kernel(
    x_ptr,
    sum_ptr,
    min_ptr,
    max_ptr,
    out_ptr,
    mean_ptr,
    scale_ptr,
    L,
    LP,
    H,
    stride_b,
    stride_l,
    stride_h,
    NSPLIT,
    NSPLIT_P2: tl.constexpr,
    D: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """fp8 (V - channel mean) / channel scale, stored transposed [BH, D, LP]; program 0 of each
    (batch, head) also writes the mean and scale for the attention epilogue."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    rows = pid * BLOCK + tl.arange(0, BLOCK)
    cols = tl.arange(0, D)
    x = _load_tile(x_ptr, bh // H, bh % H, rows, L, stride_b, stride_l, stride_h, D)
    mean = _channel_mean(sum_ptr, bh, L, NSPLIT, NSPLIT_P2, D)
    s = tl.arange(0, NSPLIT_P2)
    part = (bh * NSPLIT + s[:, None]) * D + cols[None, :]
    pmask = s[:, None] < NSPLIT
    lo = tl.min(tl.load(min_ptr + part, mask=pmask, other=float("inf")), 0)
    hi = tl.max(tl.load(max_ptr + part, mask=pmask, other=float("-inf")), 0)
    amax = tl.maximum(tl.maximum(hi - mean, mean - lo), AMAX_EPS)  # [D]
    inv = 448.0 / amax
    y = tl.where(rows[:, None] < L, (x - mean[None, :]) * inv[None, :], 0.0)
    q = tl.minimum(tl.maximum(y, -FP8_MAX), FP8_MAX).to(tl.float8e4nv)
    # transposed: token axis contiguous, as Hopper's fp8 wgmma wants the B operand of P.V (K-major)
    tl.store(out_ptr + (bh * D + cols[None, :]) * LP + rows[:, None], q)
    if pid == 0:
        tl.store(mean_ptr + bh * D + cols, mean)
        tl.store(scale_ptr + bh * D + cols, amax / 448.0)


@dataclass
class QuantizedQKV:
    """Quantized attention inputs, [B*H, tokens padded to 128, D] (V^T: [B*H, D, tokens padded])."""

    q: torch.Tensor  # int8 [BH, LQP, D]; softmax scale * log2(e) folded in
    q_scale: torch.Tensor  # fp32 [BH, LQP], one per token
    k: torch.Tensor  # int8 [BH, LKP, D], channel mean removed
    k_scale: torch.Tensor  # fp32 [BH, LKP / 128]
    v: torch.Tensor | None  # fp8 e4m3 [BH, D, LKP] (None: P.V reads the original V)
    v_mean: torch.Tensor | None  # fp32 [BH, D]
    v_scale: torch.Tensor | None  # fp32 [BH, D]


def _splits(length: int, bh: int) -> tuple[int, int]:
    """(rows per split, number of splits) so that the statistics pass has ~4 programs per SM."""
    want = max(1, -(-512 // bh))
    rows = max(QBLOCK, triton.cdiv(triton.cdiv(length, want), QBLOCK) * QBLOCK)
    return rows, triton.cdiv(length, rows)


def _stats(x: torch.Tensor, minmax: bool) -> tuple[torch.Tensor, ...]:
    B, L, H, D = x.shape
    rows, nsplit = _splits(L, B * H)
    parts = [
        torch.empty(B * H, nsplit, D, device=x.device, dtype=torch.float32) for _ in range(3 if minmax else 1)
    ]
    lo, hi = (parts[1], parts[2]) if minmax else (parts[0], parts[0])
    _stats_kernel[(nsplit, B * H)](
        x,
        parts[0],
        lo,
        hi,
        L,
        H,
        x.stride(0),
        x.stride(1),
        x.stride(2),
        rows,
        D=D,
        BLOCK=64,
        MINMAX=minmax,
        num_warps=4,
    )
    return (nsplit, *parts)


def quantize_qkv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sm_scale: float, pv_fp8: bool = True
) -> QuantizedQKV:
    """[B, L, H, D] q / k / v (any strides with a contiguous head dim) -> QuantizedQKV.

    ``sm_scale`` multiplies the logits in log2 units (1/sqrt(D) * log2(e) for softmax attention).
    """
    vq = quantize_v(v) if pv_fp8 else (None, None, None)
    return QuantizedQKV(*quantize_q(q, sm_scale), *quantize_k(k), *vq)


def _padded(length: int) -> int:
    return triton.cdiv(length, QBLOCK) * QBLOCK


def quantize_q(q: torch.Tensor, sm_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L, H, D] -> int8 [BH, LP, D] with ``sm_scale`` folded in, and its fp32 [BH, LP] per-token scales.
    One function per input so that a caller can free each bf16 input as soon as it is quantized."""
    B, L, H, D = q.shape
    lp = _padded(L)
    q8 = torch.empty(B * H, lp, D, device=q.device, dtype=torch.int8)
    qs = torch.empty(B * H, lp, device=q.device, dtype=torch.float32)
    _quant_q_kernel[(lp // QBLOCK, B * H)](
        q, q8, qs, L, lp, H, q.stride(0), q.stride(1), q.stride(2), sm_scale, D=D, BLOCK=QBLOCK, num_warps=8
    )
    return q8, qs


def quantize_k(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L, H, D] -> int8 [BH, LP, D] after removing the per-channel mean, and fp32 [BH, LP / 128] scales."""
    B, L, H, D = k.shape
    lp = _padded(L)
    nsplit, ksum = _stats(k, minmax=False)
    k8 = torch.empty(B * H, lp, D, device=k.device, dtype=torch.int8)
    ks = torch.empty(B * H, lp // QBLOCK, device=k.device, dtype=torch.float32)
    _quant_k_kernel[(lp // QBLOCK, B * H)](
        k,
        ksum,
        k8,
        ks,
        L,
        lp,
        H,
        k.stride(0),
        k.stride(1),
        k.stride(2),
        nsplit,
        NSPLIT_P2=triton.next_power_of_2(nsplit),
        D=D,
        BLOCK=QBLOCK,
        num_warps=8,
    )
    return k8, ks


def quantize_v(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, L, H, D] -> fp8 V^T [BH, D, LP] after removing the per-channel mean, the mean and the scales
    (fp32 [BH, D] each)."""
    B, L, H, D = v.shape
    lp = _padded(L)
    nsplit, vsum, vmin, vmax = _stats(v, minmax=True)
    v8 = torch.empty(B * H, D, lp, device=v.device, dtype=torch.float8_e4m3fn)
    vm = torch.empty(B * H, D, device=v.device, dtype=torch.float32)
    vs = torch.empty(B * H, D, device=v.device, dtype=torch.float32)
    _quant_v_kernel[(lp // QBLOCK, B * H)](
        v,
        vsum,
        vmin,
        vmax,
        v8,
        vm,
        vs,
        L,
        lp,
        H,
        v.stride(0),
        v.stride(1),
        v.stride(2),
        nsplit,
        NSPLIT_P2=triton.next_power_of_2(nsplit),
        D=D,
        BLOCK=QBLOCK,
        num_warps=8,
    )
    return v8, vm, vs
