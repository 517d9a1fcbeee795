"""Quantization prologue of the low-precision attention: int8 Q (per token), int8 K (smoothed, per block
of 128 keys), fp8 V (smoothed, per channel, stored transposed). Triton kernels, one pass each after a
statistics pass over K (every ``KMEAN_STRIDE``-th token) and V (all tokens).

Every output buffer is padded to a multiple of 128 tokens and fully written (zeros past the sequence),
so the attention kernel loads whole tiles without masks and never meets a NaN bit pattern.

V^T may store its keys in ``key_order`` within each block of 128 (the Gluon kernel's P layout, see
``key_order``); the attention is the same sum over keys in another order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

QBLOCK = 128  # tokens per K scale block and padding unit of every buffer
# Both attention kernels let a query row's running max go stale while a key block's max exceeds it by at
# most MAX_SLACK (log2 units), P being computed as 448 * 2^-MAX_SLACK * exp2(s - max) <= 448 (fp8 e4m3's
# largest value). Most blocks then leave the max, and O, untouched (rescale factor exactly 1), which lets
# the Gluon kernel skip O's rescale; the cost is 2^MAX_SLACK less headroom below P's largest value before
# fp8 flushes small probabilities to zero (2^-MAX_SLACK of the smallest subnormal, ~2e-6 of the max).
MAX_SLACK = 2.0
FP8_MAX = tl.constexpr(448.0)
AMAX_EPS = tl.constexpr(1e-8)


@triton.jit
def _load_tile(x_ptr, b, h, rows, L, stride_b, stride_l, stride_h, D: tl.constexpr):
    """[BLOCK, D] fp32 rows of one (batch, head); zeros past L."""
    cols = tl.arange(0, D)
    ptrs = x_ptr + b * stride_b + h * stride_h + rows[:, None] * stride_l + cols[None, :]
    return tl.load(ptrs, mask=rows[:, None] < L, other=0.0).to(tl.float32)


@triton.jit
def _accumulate(acc, lo, hi, x, MINMAX: tl.constexpr):
    acc += x
    if MINMAX:
        lo = tl.minimum(lo, x)
        hi = tl.maximum(hi, x)
    return acc, lo, hi


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
    SUB: tl.constexpr,
    MINMAX: tl.constexpr,
    STAGES: tl.constexpr,
):
    """Partial per-channel sum (and min / max) over ROWS tokens of one (batch, head): [BH, NSPLIT, D].

    Accumulates elementwise into [SUB, D] register tiles (every thread owns its slots: no cross-warp
    reduction inside the loop) and reduces them once at the end. The loop is software-pipelined
    (cp.async into STAGES shared-memory buffers): ptxas interleaves plain loads with their uses, which
    left each warp one or two 16-byte loads in flight. Slot j sums rows j, j + SUB, j + 2 SUB, ... of the
    split in increasing order (deterministic)."""
    split = tl.program_id(0)
    bh = tl.program_id(1)
    nsplit = tl.num_programs(0)
    start = split * ROWS
    end = tl.minimum(start + ROWS, L)
    sub = tl.arange(0, SUB)
    cols = tl.arange(0, D)
    base = x_ptr + (bh // H) * stride_b + (bh % H) * stride_h + sub[:, None] * stride_l + cols[None, :]
    acc = tl.zeros([SUB, D], tl.float32)
    lo = tl.full([SUB, D], float("inf"), tl.float32)
    hi = tl.full([SUB, D], float("-inf"), tl.float32)
    full_end = start + (end - start) // SUB * SUB
    # num_stages on the loop itself: Triton pipelines loads that feed no dot only when asked this way
    for r in tl.range(start, full_end, SUB, num_stages=STAGES):  # whole tiles: no masks
        acc, lo, hi = _accumulate(acc, lo, hi, tl.load(base + r * stride_l).to(tl.float32), MINMAX)
    for r in range(full_end, end, SUB):  # ragged end of the last split only
        valid = (r + sub)[:, None] < end
        x = tl.load(base + r * stride_l, mask=valid, other=0.0).to(tl.float32)
        acc += x
        if MINMAX:
            lo = tl.minimum(lo, tl.where(valid, x, float("inf")))
            hi = tl.maximum(hi, tl.where(valid, x, float("-inf")))
    out = (bh * nsplit + split) * D + cols
    tl.store(sum_ptr + out, tl.sum(acc, 0))
    if MINMAX:
        tl.store(min_ptr + out, tl.min(lo, 0))
        tl.store(max_ptr + out, tl.max(hi, 0))


@triton.jit
def _finalize_kernel(
    sum_ptr,
    min_ptr,
    max_ptr,
    mean_ptr,
    scale_ptr,
    inv_ptr,
    L,
    NSPLIT,
    NSPLIT_P2: tl.constexpr,
    D: tl.constexpr,
    MINMAX: tl.constexpr,
):
    """Partials [BH, NSPLIT, D] -> channel mean [BH, D]; with MINMAX also V's fp8 scale amax / 448 and its
    inverse 448 / amax (what the quantization multiplies by), so each quant program loads [D] vectors."""
    bh = tl.program_id(0)
    s = tl.arange(0, NSPLIT_P2)
    cols = tl.arange(0, D)
    part = (bh * NSPLIT + s[:, None]) * D + cols[None, :]
    pmask = s[:, None] < NSPLIT
    mean = tl.sum(tl.load(sum_ptr + part, mask=pmask, other=0.0), 0) / L
    tl.store(mean_ptr + bh * D + cols, mean)
    if MINMAX:
        lo = tl.min(tl.load(min_ptr + part, mask=pmask, other=float("inf")), 0)
        hi = tl.max(tl.load(max_ptr + part, mask=pmask, other=float("-inf")), 0)
        amax = tl.maximum(tl.maximum(hi - mean, mean - lo), AMAX_EPS)  # [D]
        tl.store(scale_ptr + bh * D + cols, amax / 448.0)
        tl.store(inv_ptr + bh * D + cols, 448.0 / amax)


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
    q, scale = int8_rows(x)
    tl.store(out_ptr + (bh * LP + rows[:, None]) * D + tl.arange(0, D)[None, :], q)
    tl.store(scale_ptr + bh * LP + rows, scale)


@triton.jit
def int8_rows(x):
    """Q's quantization of fp32 rows [R, D] (scales folded in): int8 values rounded half away from zero
    and one fp32 scale per row (|max| / 127, at least AMAX_EPS / 127). Also used by the q norm + RoPE
    kernel that quantizes Q in the same pass (``fused.rms_norm_rope_quant``)."""
    amax = tl.maximum(tl.max(tl.abs(x), 1), AMAX_EPS)  # [R]
    y = x * (127.0 / amax)[:, None]
    q = tl.where(y >= 0, y + 0.5, y - 0.5).to(tl.int8)  # round half away from zero (truncating cast)
    return q, amax / 127.0


@triton.jit
def _quant_k_kernel(
    x_ptr,
    mean_ptr,
    out_ptr,
    scale_ptr,
    L,
    LP,
    H,
    stride_b,
    stride_l,
    stride_h,
    D: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """int8 (K - channel mean of K) with one scale per block of BLOCK keys."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    rows = pid * BLOCK + tl.arange(0, BLOCK)
    cols = tl.arange(0, D)
    x = _load_tile(x_ptr, bh // H, bh % H, rows, L, stride_b, stride_l, stride_h, D)
    mean = tl.load(mean_ptr + bh * D + cols)
    x = tl.where(rows[:, None] < L, x - mean[None, :], 0.0)
    amax = tl.maximum(tl.max(tl.max(tl.abs(x), 1), 0), AMAX_EPS)
    y = x * (127.0 / amax)
    q = tl.where(y >= 0, y + 0.5, y - 0.5).to(tl.int8)
    tl.store(out_ptr + (bh * LP + rows[:, None]) * D + cols[None, :], q)
    tl.store(scale_ptr + bh * (LP // BLOCK) + pid, amax / 127.0)


def key_order(n: int = QBLOCK) -> torch.Tensor:
    """Where V^T stores each key of a block of ``n`` (a multiple of 8) with ``quantize_v(key_order=True)``:
    key 8g + 2t + e at 2 (n / 8) t + 2g + e (g < n / 8, t < 4, e < 2). In the wgmma accumulator layout of a
    block's logits, thread t of each group of four holds exactly the keys 8g + 2t + e of its rows, which
    this order makes one contiguous run of n / 4 bytes per row: the Gluon kernel stores its fp8 P with four
    16-byte stores per thread instead of 32 two-byte ones, and reads V^T's keys in the same order."""
    k = torch.arange(n)
    return 2 * (n // 8) * ((k % 8) // 2) + 2 * (k // 8) + k % 2


@triton.jit
def _quant_v_kernel(
    x_ptr,
    mean_ptr,
    inv_ptr,
    out_ptr,
    L,
    LP,
    H,
    stride_b,
    stride_l,
    stride_h,
    D: tl.constexpr,
    BLOCK: tl.constexpr,
    KEY_ORDER: tl.constexpr,
):
    """fp8 (V - channel mean) * (448 / channel amax), stored transposed [BH, D, LP]; with KEY_ORDER the
    block's keys in ``key_order``."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    rows = pid * BLOCK + tl.arange(0, BLOCK)
    cols = tl.arange(0, D)
    x = _load_tile(x_ptr, bh // H, bh % H, rows, L, stride_b, stride_l, stride_h, D)
    mean = tl.load(mean_ptr + bh * D + cols)
    inv = tl.load(inv_ptr + bh * D + cols)
    y = tl.where(rows[:, None] < L, (x - mean[None, :]) * inv[None, :], 0.0)
    if KEY_ORDER:  # row 8g + 2t + e moves to 2 (BLOCK / 8) t + 2g + e: [g, t, e] -> [t, g, e]
        y = tl.reshape(tl.permute(tl.reshape(y, [BLOCK // 8, 4, 2, D]), (1, 0, 2, 3)), [BLOCK, D])
    q = tl.minimum(tl.maximum(y, -FP8_MAX), FP8_MAX).to(tl.float8e4nv)
    # transposed: token axis contiguous, as Hopper's fp8 wgmma wants the B operand of P.V (K-major)
    tl.store(out_ptr + (bh * D + cols[None, :]) * LP + rows[:, None], q)


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
    v_key_order: bool = False  # V^T's keys stored in key_order within each block of 128


# Statistics pass: up to ~4096 programs of at least 128 rows (several waves on 132 SMs, so the last,
# partial wave costs little), at most 64 splits per (batch, head) so that the finalize kernel reduces them
# in one load. Wan-14B 480p (BH 40, L 32760): 64 splits of 512 rows, 2560 programs.
STATS_PROGRAMS = 4096
MAX_SPLITS = 64
# (rows per tile SUB, warps, pipeline stages). sm_90, D 128: the sum pass (K, one [32, D] accumulator)
# uses 64 registers and 24 KB of shared memory -> 8 programs per SM, ~2-3 8-KB tiles in flight each; the
# sum / min / max pass (V, three [16, D] accumulators) 72 registers and 20 KB -> 7 programs per SM,
# ~4-5 4-KB tiles in flight each (benchmarks/triton_sass.py; no spills).
STATS_SUM = (32, 4, 4)
STATS_MINMAX = (16, 4, 6)


def _splits(length: int, bh: int) -> tuple[int, int]:
    """(rows per split, a multiple of 128; number of splits <= MAX_SPLITS) for the statistics pass."""
    want = min(MAX_SPLITS, max(1, -(-STATS_PROGRAMS // bh)))
    rows = max(QBLOCK, triton.cdiv(triton.cdiv(length, want), QBLOCK) * QBLOCK)
    return rows, triton.cdiv(length, rows)


def _stats(x: torch.Tensor, minmax: bool) -> tuple[torch.Tensor, ...]:
    """Channel statistics of [B, L, H, D] x over the token axis: fp32 [BH, D] mean, and with ``minmax``
    also V's fp8 scale (amax of x - mean over tokens, / 448) and its inverse (448 / amax)."""
    B, L, H, D = x.shape
    rows, nsplit = _splits(L, B * H)
    parts = torch.empty(3 if minmax else 1, B * H, nsplit, D, device=x.device, dtype=torch.float32)
    lo, hi = (parts[1], parts[2]) if minmax else (parts[0], parts[0])  # unused without minmax
    sub, warps, stages = STATS_MINMAX if minmax else STATS_SUM
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
        SUB=sub,
        MINMAX=minmax,
        STAGES=stages,
        num_warps=warps,
    )
    # separate tensors: quantize_v returns two of them, and a custom op's outputs must not alias
    out = [torch.empty(B * H, D, device=x.device, dtype=torch.float32) for _ in range(3 if minmax else 1)]
    _finalize_kernel[(B * H,)](
        parts[0],
        lo,
        hi,
        out[0],
        out[1] if minmax else out[0],  # unused without minmax
        out[2] if minmax else out[0],
        L,
        nsplit,
        NSPLIT_P2=triton.next_power_of_2(nsplit),
        D=D,
        MINMAX=minmax,
        num_warps=8,
    )
    return tuple(out)


def quantize_qkv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sm_scale: float, pv_fp8: bool = True, key_order: bool = False
) -> QuantizedQKV:
    """[B, L, H, D] q / k / v (any strides with a contiguous head dim) -> QuantizedQKV.

    ``sm_scale`` multiplies the logits in log2 units (1/sqrt(D) * log2(e) for softmax attention);
    ``key_order``: V^T's keys in ``key_order`` (what the Gluon kernel reads).
    """
    vq = quantize_v(v, key_order) if pv_fp8 else (None, None, None)
    return QuantizedQKV(*quantize_q(q, sm_scale), *quantize_k(k), *vq, v_key_order=pv_fp8 and key_order)


def _padded(length: int) -> int:
    return triton.cdiv(length, QBLOCK) * QBLOCK


def q_buffers(like: torch.Tensor, B: int, L: int, H: int, D: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty int8 Q [BH, LP, D] and its fp32 [BH, LP] per-token scales (LP = L padded to QBLOCK), on
    ``like``'s device: what ``quantize_q`` fills (and ``fused.rms_norm_rope_quant``)."""
    lp = _padded(L)
    return like.new_empty(B * H, lp, D, dtype=torch.int8), like.new_empty(B * H, lp, dtype=torch.float32)


def quantize_q(q: torch.Tensor, sm_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L, H, D] -> int8 [BH, LP, D] with ``sm_scale`` folded in, and its fp32 [BH, LP] per-token scales.
    One function per input so that a caller can free each bf16 input as soon as it is quantized."""
    B, L, H, D = q.shape
    q8, qs = q_buffers(q, B, L, H, D)
    lp = q8.shape[1]
    _quant_q_kernel[(lp // QBLOCK, B * H)](
        q, q8, qs, L, lp, H, q.stride(0), q.stride(1), q.stride(2), sm_scale, D=D, BLOCK=QBLOCK, num_warps=8
    )
    return q8, qs


# K's channel mean is taken over every KMEAN_STRIDE-th token. Any per-channel vector m may be removed from K:
# q . (k - m) = q . k - q . m shifts every logit of a query row by the same amount, which the softmax
# cancels exactly. m only needs to be close to K's channel offsets (its large, token-independent part) for
# int8 to spend its range on what varies; a strided sample estimates them as well as all tokens do, for an
# eighth of the statistics pass's reads (V's mean, added back after P.V, is exact for any m too, but V's
# fp8 scale needs the extremes of all tokens, so V's pass reads them all anyway).
KMEAN_STRIDE = 8


def key_mean(k: torch.Tensor) -> torch.Tensor:
    """fp32 [BH, D]: the channel mean ``quantize_k`` removes from [B, L, H, D] k (tokens 0, 8, 16, ...)."""
    return _stats(k[:, ::KMEAN_STRIDE], minmax=False)[0]


def quantize_k(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L, H, D] -> int8 [BH, LP, D] after removing a per-channel mean (``key_mean``), and fp32
    [BH, LP / 128] scales (one per block of 128 keys, over all of its keys)."""
    B, L, H, D = k.shape
    lp = _padded(L)
    kmean = key_mean(k)
    k8 = torch.empty(B * H, lp, D, device=k.device, dtype=torch.int8)
    ks = torch.empty(B * H, lp // QBLOCK, device=k.device, dtype=torch.float32)
    _quant_k_kernel[(lp // QBLOCK, B * H)](
        k, kmean, k8, ks, L, lp, H, k.stride(0), k.stride(1), k.stride(2), D=D, BLOCK=QBLOCK, num_warps=8
    )
    return k8, ks


def quantize_v(v: torch.Tensor, key_order: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, L, H, D] -> fp8 V^T [BH, D, LP] after removing the per-channel mean (keys in ``key_order``
    within each block of 128 with ``key_order``), the mean and the scales (fp32 [BH, D] each)."""
    B, L, H, D = v.shape
    lp = _padded(L)
    vm, vs, vinv = _stats(v, minmax=True)
    v8 = torch.empty(B * H, D, lp, device=v.device, dtype=torch.float8_e4m3fn)
    _quant_v_kernel[(lp // QBLOCK, B * H)](
        v, vm, vinv, v8, L, lp, H, v.stride(0), v.stride(1), v.stride(2), D=D, BLOCK=QBLOCK,
        KEY_ORDER=key_order, num_warps=8,
    )
    return v8, vm, vs


def SASS_CASES():  # noqa: N802 - picked up by benchmarks/triton_sass.py
    ints = {n: "i32" for n in ("L", "LP", "H", "stride_b", "stride_l", "stride_h")}
    div16 = ["LP", "stride_b", "stride_l", "stride_h"]
    sig = {"x_ptr": "*bf16", "mean_ptr": "*fp32", "inv_ptr": "*fp32", "out_ptr": "*fp8e4nv", **ints}
    for order in (False, True):
        const = {"D": 128, "BLOCK": QBLOCK, "KEY_ORDER": order}
        yield (f"quant_v_128{'_key_order' if order else ''}", _quant_v_kernel, dict(sig), const, {"num_warps": 8}, div16)
    sig = {"x_ptr": "*bf16", "mean_ptr": "*fp32", "out_ptr": "*i8", "scale_ptr": "*fp32", **ints}
    yield ("quant_k_128", _quant_k_kernel, sig, {"D": 128, "BLOCK": QBLOCK}, {"num_warps": 8}, div16)
    sig = {"x_ptr": "*bf16", "out_ptr": "*i8", "scale_ptr": "*fp32", "mul": "fp32", **ints}
    yield ("quant_q_128", _quant_q_kernel, sig, {"D": 128, "BLOCK": QBLOCK}, {"num_warps": 8}, div16)
    stats = {"x_ptr": "*bf16", "sum_ptr": "*fp32", "min_ptr": "*fp32", "max_ptr": "*fp32"}
    stats.update({n: "i32" for n in ("L", "H", "stride_b", "stride_l", "stride_h", "ROWS")})
    for minmax, (sub, warps, stages) in ((False, STATS_SUM), (True, STATS_MINMAX)):
        yield (
            f"stats_{'minmax' if minmax else 'sum'}_128",
            _stats_kernel,
            dict(stats),
            {"D": 128, "SUB": sub, "MINMAX": minmax, "STAGES": stages},
            {"num_warps": warps},
            ["stride_b", "stride_l", "stride_h", "ROWS"],
        )
    fin = {n: "*fp32" for n in ("sum_ptr", "min_ptr", "max_ptr", "mean_ptr", "scale_ptr", "inv_ptr")}
    fin.update({"L": "i32", "NSPLIT": "i32"})
    for minmax in (False, True):
        yield (
            f"stats_finalize_{'minmax' if minmax else 'sum'}_128",
            _finalize_kernel,
            dict(fin),
            {"NSPLIT_P2": MAX_SPLITS, "D": 128, "MINMAX": minmax},
            {"num_warps": 8},
            [],
        )
