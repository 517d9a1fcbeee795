"""One-launch W8A8 linear for small M (CLIP, T5, time embedding): per-token quantization inside the GEMM.

Each program quantizes the rows of its output tile itself: a first sweep over K takes each row's |max|
(in the input dtype, exact), the scale and its reciprocal come out exactly as in the standalone quantizer
(``triton_quant``), and the main loop quantizes each activation tile with the same arithmetic before
feeding the tensor cores. So q and the scales are bit-identical to the two-kernel path; only the launch
count differs (one instead of two), which is what small GEMMs pay for.

The cost: every program of a row block re-reads its rows (twice: sweep and main loop) from L2, N /
BLOCK_N times in all, and converts each activation tile once per output tile. Cheap while M * K is small
(CLIP: 257 x 1280); the tuner compares it with the quantizer + GEMM path on each shape
(``triton_linear.launch_linear_w8a8``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from lightx2v_quant.quant.kernels.triton_gemm import _tile_coords
from lightx2v_quant.quant.kernels.triton_quant import _quantize_values, _row_scale


@triton.jit(do_not_specialize=["M"])
def w8a8_quant_gemm_kernel(
    x_ptr,
    b_ptr,
    c_ptr,
    sb_ptr,
    bias_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_bn,
    stride_cm,
    QMAX: tl.constexpr,
    IS_INT8: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
):
    """x [M, K] bf16/fp16/fp32, W [N, K] int8/fp8 (K-major, as stored), w_scale [N] -> y [M, N]."""
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = _tile_coords(tl.program_id(0), num_pid_m, num_pid_n, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # rows/cols past the edge read row 0 (finite, unmasked loads); the store drops them
    offs_am = tl.max_contiguous(tl.multiple_of(tl.where(offs_m < M, offs_m, 0), BLOCK_M), BLOCK_M)
    offs_bn = tl.max_contiguous(tl.multiple_of(tl.where(offs_n < N, offs_n, 0), BLOCK_N), BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + offs_am.to(tl.int64)[:, None] * stride_xm  # [BM, 1]
    k_tiles = tl.cdiv(K, BLOCK_K)

    amax = tl.zeros([BLOCK_M], dtype=tl.float32)
    for kt in range(0, k_tiles):
        cols = kt * BLOCK_K + offs_k
        if EVEN_K:
            x = tl.load(x_rows + cols[None, :])
        else:
            x = tl.load(x_rows + cols[None, :], mask=cols[None, :] < K, other=0.0)
        amax = tl.maximum(amax, tl.max(tl.abs(x), axis=1).to(tl.float32))
    scale, rcp = _row_scale(amax, QMAX)  # [BM], as the standalone quantizer computes them

    b_ptrs = b_ptr + offs_bn.to(tl.int64)[None, :] * stride_bn + offs_k[:, None]  # [BK, BN], K-major
    acc_dtype: tl.constexpr = tl.int32 if IS_INT8 else tl.float32
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_dtype)
    for kt in range(0, k_tiles):
        cols = kt * BLOCK_K + offs_k
        if EVEN_K:
            x = tl.load(x_rows + cols[None, :])
            b = tl.load(b_ptrs)
        else:
            x = tl.load(x_rows + cols[None, :], mask=cols[None, :] < K, other=0.0)
            b = tl.load(b_ptrs, mask=cols[:, None] < K, other=0.0)
        a = _quantize_values(x, scale[:, None], rcp[:, None], IS_INT8)
        acc = tl.dot(a, b, acc, out_dtype=acc_dtype)
        b_ptrs += BLOCK_K
    # the two-kernel path's epilogue, same operations in the same order
    sb = tl.load(sb_ptr + offs_n, mask=offs_n < N, other=0.0)
    out = acc.to(tl.float32) * scale[:, None] * sb[None, :]
    if HAS_BIAS:
        out = out + tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    c_ptrs = c_ptr + offs_m.to(tl.int64)[:, None] * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, out.to(c_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))
