"""One-launch W8A8 linear for small problems (CLIP, time embedding): per-token quantization inside the GEMM.

Each program quantizes the rows of its output tile itself (prologue fusion): a pipelined sweep over K takes
each row's |max| (in fp32, exact), the scale and its reciprocal come out exactly as in the
standalone quantizer (``triton_quant._row_scale``), and the main loop quantizes each activation tile in
registers with the quantizer's arithmetic (``_quantize_values``) before feeding the tensor cores. So q and
the scales are bit-identical to the two-kernel path (up to the sign of fp8 zeros, which no sum sees), and
so is the output of the same tile (same MMA instructions, same K order); only the launch count differs
(one instead of two), which is what small GEMMs pay for.

The cost: every program of a row block re-reads its rows (twice: sweep and main loop) from L2, N /
BLOCK_N times in all, and quantizes them again. ``fused_route_eligible`` (below) is the rule that says
where that is worth it; ``triton_linear.launch_linear_w8a8`` dispatches on it.
"""

from __future__ import annotations

import os
from dataclasses import replace

import triton
import triton.language as tl

from lightx2v_quant.quant.kernels.triton_gemm import _epilogue, _tile_coords
from lightx2v_quant.quant.kernels.triton_quant import _quantize_values, _row_scale
from lightx2v_quant.quant.kernels.triton_tuning import SPLIT, TileConfig, m_bucket


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
    SWEEP_STAGES: tl.constexpr,
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

    # Prologue: each row's |max| over the whole K. The loop is software-pipelined (tl.range with
    # stages: async copies keep several tiles in flight; without it each iteration waits a full L2
    # round trip), and the max is kept element-wise and reduced across the tile once at the end, not
    # per iteration (no shuffles in the loop). It is kept in fp32, as the long-row quantizer does:
    # exact for every input dtype, and the only loop-carried type every Triton accepts (3.6's
    # tl.maximum promotes bf16 operands to fp32, so a bf16 running max changes type in the loop).
    m_tile = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)
    for kt in tl.range(0, k_tiles, num_stages=SWEEP_STAGES):
        cols = kt * BLOCK_K + offs_k
        if EVEN_K:
            x = tl.load(x_rows + cols[None, :])
        else:
            x = tl.load(x_rows + cols[None, :], mask=cols[None, :] < K, other=0.0)
        m_tile = tl.maximum(m_tile, tl.abs(x).to(tl.float32))
    scale, rcp = _row_scale(tl.max(m_tile, axis=1), QMAX)  # [BM], as the standalone quantizer computes them

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
        # the quantizer's arithmetic; a zero's sign is left alone (it never changes the dot product)
        a = _quantize_values(x, scale[:, None], rcp[:, None], IS_INT8, False)
        acc = tl.dot(a, b, acc, out_dtype=acc_dtype)
        b_ptrs += BLOCK_K
    # the two-kernel path's epilogue (acc * a_scale[m] * w_scale[n] + bias), fed the scales in registers
    out = _epilogue(acc, offs_m, offs_n, M, N, scale, sb_ptr, bias_ptr, HAS_BIAS, False, True)
    c_ptrs = c_ptr + offs_m.to(tl.int64)[:, None] * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, out.to(c_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


# -- the dispatch rule and the tiles ------------------------------------------------------------------
FUSE_MAX_M = 1024  # the one-launch quantize+GEMM kernel is never a candidate beyond this many rows
FUSE_AUTO_MAX_M = 64  # in the default ``auto`` mode it is a tuning candidate only up to this many rows
ROUTES = ("auto", "split", "fused")
SWEEP_STAGES = 3  # tiles in flight in the |max| sweep (its software pipeline's depth)


def _f(bm: int, bn: int, bk: int, w: int, s: int) -> TileConfig:
    return TileConfig(bm, bn, bk, w, s, fused=True)


# One-launch quantize+GEMM tiles (small and medium M). The activation tile is quantized in registers,
# so it is wgmma's register operand (64 rows per warpgroup); the prologue's quantization is ALU work
# per program, so 8-warp variants of the 64-row tiles spread it over two warpgroups. Narrow N keeps
# enough programs for CLIP's N = 1280 (5 x 10 tiles of 64 x 128), wide N re-reads A fewer times.
_FUSED = {
    "medium": [
        _f(64, 128, 128, 4, 3),
        _f(64, 256, 128, 8, 3),
        _f(64, 128, 128, 8, 3),
        _f(64, 64, 128, 4, 4),
        _f(128, 128, 128, 8, 3),
    ],
    "small": [_f(16, 128, 128, 4, 3), _f(16, 64, 128, 4, 3), _f(32, 128, 128, 4, 3), _f(64, 64, 128, 4, 4)],
}
INTERPRETER_FUSED = _f(16, 32, 64, 4, 2)  # the one-launch route under the CPU interpreter (small, quick)


def fused_route_eligible(m: int, n: int, k: int) -> bool:
    """The dispatch rule for the one-launch quantize+GEMM kernel (``triton_fused``).

    It saves a fixed cost: the quantizer's launch and the round trip of q through memory (a few
    microseconds on an H100, a fifth of a CLIP-sized GEMM). It pays per program: each of the N / BLOCK_N
    programs of a row block reads its BLOCK_M x K activation rows twice (|max| sweep, main loop) from L2
    and quantizes them again, so its extra work grows with M * N * K, the GEMM's own work. Hence:
    - M <= 64 (time embedding, modulation: M = batch): a candidate next to SPLIT; a program's rows are
      few next to its weight tile, which is what the GEMM streams anyway;
    - larger M: never in ``auto``. Measured on an H100 at CLIP ViT-H's shapes (M = 257,
      ``benchmarks/results/gemm_clip-t5_routes_nvidia-h100.md``, GPU time with CUDA events): fused
      0.28-0.49x of bf16 against 0.54-0.76x for quantizer + GEMM, and the tuner (which times with the
      CPU in the loop) still picked fused for CLIP's fc2, so the shape rule keeps medium M on SPLIT.
      T5 (M = 512) was 1.3-2.5x slower fused on the H200. ``LIGHTX2V_QUANT_TRITON_ROUTE=fused`` still
      forces it for any M <= FUSE_MAX_M (benchmarks).
    """
    return m <= FUSE_AUTO_MAX_M


def route_mode() -> str:
    """LIGHTX2V_QUANT_TRITON_ROUTE: ``auto`` (default; the rule, then tuning), ``split`` or ``fused``."""
    mode = os.environ.get("LIGHTX2V_QUANT_TRITON_ROUTE", "auto")
    if mode not in ROUTES:
        raise ValueError(f"LIGHTX2V_QUANT_TRITON_ROUTE must be one of {', '.join(ROUTES)}, got {mode!r}")
    return mode


def fused_candidates(m: int, sm: int, max_smem: int) -> list[TileConfig]:
    """The one-launch tiles for M rows that fit this GPU (any M: the rule is applied by the caller)."""
    if sm == 0:  # CPU interpreter
        return [INTERPRETER_FUSED]
    row_cap = m_bucket(m)
    fused = [c for c in _FUSED["small" if m <= 64 else "medium"] if c.block_m <= row_cap]
    fused = [c for c in fused if c.smem_bytes(2, 1, 2) <= max_smem]
    if sm < 90:  # no wgmma: smaller tiles keep mma.sync's registers in check
        fused = [replace(c, num_warps=4) for c in fused if c.block_m * c.block_n <= 64 * 128]
    return list(dict.fromkeys(fused))


def linear_candidates(m: int, n: int, k: int, sm: int, max_smem: int, mode: str = "auto") -> list[TileConfig]:
    """Routes for a W8A8 linear, default first. ``auto``: where ``fused_route_eligible`` holds, the
    one-launch tiles first, then SPLIT (the tuner keeps whichever is fastest on this GPU); elsewhere SPLIT
    alone. ``split`` / ``fused``: that route only (benchmarks; fused for any M <= FUSE_MAX_M)."""
    if mode == "split":
        return [SPLIT]
    if mode == "fused":
        if m > FUSE_MAX_M:
            raise ValueError(
                f"LIGHTX2V_QUANT_TRITON_ROUTE=fused: the one-launch kernel takes at most {FUSE_MAX_M} rows, "
                f"got M={m}; unset the variable (or set it to auto) for this shape"
            )
        return fused_candidates(m, sm, max_smem)
    if not fused_route_eligible(m, n, k):
        return [SPLIT]
    return [*fused_candidates(m, sm, max_smem), SPLIT]
