"""Triton GEMM kernels: W8A8 (fp8 / int8, per-token x per-channel or 128-block scales) and W4A16 int4-g128.

All compute y[M, N] = A[M, K] @ W[N, K]^T with W read as stored (K-major): a W tile [BLOCK_N, BLOCK_K] is
already the K-major B operand that Hopper's wgmma wants, so nothing is copied or transposed in memory.

- ``w8a8_kernel``: pointer loads, one tile per program, grouped tile order for L2 reuse (any GPU).
- ``w8a8_tma_kernel``: persistent (one program per SM), TMA tensor-descriptor loads and stores (sm_90+).
- ``w4a16_kernel``: bf16/fp16 activations, int4 weights unpacked and scaled in registers.

With USE_PDL the W8A8 kernels are launched as programmatic dependents of the quantizer (sm_90): they
start while its last programs finish and wait (griddepcontrol.wait) before reading anything, which hides
the launch gap between the two kernels, a visible share of small GEMMs such as CLIP's.

Per-channel epilogue: out = acc * a_scale[m] * w_scale[n] (+ bias). Block-128 mode (BLOCK_SCALED) scales
each K-block's partial product by a_scale[m, kb] * w_scale[n // 128, kb] inside the K loop (the
promotion DeepGEMM does), so BLOCK_K must divide 128. Launchers live in ``triton_ops``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from lightx2v_quant.quant.kernels.triton_quant import INTERPRET


@triton.jit
def _tile_coords(tile_id, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """Grouped ordering: GROUP_M row-tiles share each column sweep, so W tiles are reused from L2."""
    width = GROUP_M * num_pid_n
    group = tile_id // width
    first_m = group * GROUP_M
    size_m = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (tile_id % width) % size_m
    pid_n = (tile_id % width) // size_m
    return pid_m, pid_n


@triton.jit
def _epilogue(
    acc,
    offs_m,
    offs_n,
    M,
    N,
    sa,
    sb_ptr,
    bias_ptr,
    HAS_BIAS: tl.constexpr,
    BLOCK_SCALED: tl.constexpr,
    SA_VALUES: tl.constexpr,
):
    """fp32 [BM, BN] result: per-channel scales (unless already applied per K-block) and bias. ``sa``
    points to the per-token scales, or (SA_VALUES: the fused kernel, which computed them) is their [BM]
    values."""
    out = acc.to(tl.float32)
    if not BLOCK_SCALED:
        if SA_VALUES:
            sa_v = sa
        else:
            sa_v = tl.load(sa + offs_m, mask=offs_m < M, other=0.0)
        sb = tl.load(sb_ptr + offs_n, mask=offs_n < N, other=0.0)
        out = out * sa_v[:, None] * sb[None, :]
    if HAS_BIAS:
        out = out + tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    return out


@triton.jit
def _block_scale(
    sa_ptr,
    sb_ptr,
    kt,
    offs_am,
    off_n,
    offs_bn,
    stride_sak,
    stride_sbn,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """a_scale[m, kb] * w_scale[n // 128, kb] for the 128-group holding K-tile kt, broadcastable to the
    [BLOCK_M, BLOCK_N] tile. a_scale is stored [K/128, M]. A tile at most 128 wide lies in one weight
    block (tiles start at multiples of BLOCK_N, which divides 128): one scalar weight scale, so the
    per-K-block promotion costs one multiply-add per accumulator element."""
    kb = (kt * BLOCK_K) // 128
    sa = tl.load(sa_ptr + kb * stride_sak + offs_am)
    if BLOCK_N <= 128:
        scale = (sa * tl.load(sb_ptr + (off_n // 128) * stride_sbn + kb))[:, None]
    else:
        scale = sa[:, None] * tl.load(sb_ptr + (offs_bn // 128) * stride_sbn + kb)[None, :]
    return scale


@triton.jit(do_not_specialize=["M"])
def w8a8_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    sa_ptr,
    sb_ptr,
    bias_ptr,
    M,
    N,
    K,
    stride_am,
    stride_bn,
    stride_cm,
    stride_sak,
    stride_sbn,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_SCALED: tl.constexpr,
    IS_INT8: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    if USE_PDL:  # launched early (programmatic dependent launch): wait for the quantizer's results
        tl.extra.cuda.gdc_wait()
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = _tile_coords(tl.program_id(0), num_pid_m, num_pid_n, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # Rows/cols past the edge read row 0 instead of being masked: loads stay unmasked and vectorized;
    # the store below drops them.
    offs_am = tl.where(offs_m < M, offs_m, 0)
    offs_bn = tl.where(offs_n < N, offs_n, 0)
    offs_am = tl.max_contiguous(tl.multiple_of(offs_am, BLOCK_M), BLOCK_M)
    offs_bn = tl.max_contiguous(tl.multiple_of(offs_bn, BLOCK_N), BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + offs_am.to(tl.int64)[:, None] * stride_am + offs_k[None, :]  # [BM, BK]
    b_ptrs = b_ptr + offs_bn.to(tl.int64)[None, :] * stride_bn + offs_k[:, None]  # [BK, BN], K-major
    acc_dtype: tl.constexpr = tl.int32 if IS_INT8 else tl.float32  # block mode is fp8 only
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_dtype)
    for kt in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_left = K - kt * BLOCK_K
            a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        if BLOCK_SCALED:
            off_n = pid_n * BLOCK_N
            scale = _block_scale(
                sa_ptr, sb_ptr, kt, offs_am, off_n, offs_bn, stride_sak, stride_sbn, BLOCK_N, BLOCK_K
            )
            acc += tl.dot(a, b) * scale
        else:
            acc = tl.dot(a, b, acc, out_dtype=acc_dtype)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    out = _epilogue(acc, offs_m, offs_n, M, N, sa_ptr, sb_ptr, bias_ptr, HAS_BIAS, BLOCK_SCALED, False)
    c_ptrs = c_ptr + offs_m.to(tl.int64)[:, None] * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, out.to(c_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit(do_not_specialize=["M"])
def w8a8_tma_kernel(
    a_desc,
    b_desc,
    c_desc,
    sa_ptr,
    sb_ptr,
    bias_ptr,
    M,
    N,
    K,
    stride_sak,
    stride_sbn,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    NUM_SMS: tl.constexpr,
    SUBTILE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_SCALED: tl.constexpr,
    IS_INT8: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """Persistent: program p takes tiles p, p + NUM_SMS, ... In per-channel mode the loop nest is
    flattened so the compiler prefetches the next tile's first K-blocks during this tile's epilogue
    (block mode keeps the nest: its second accumulator leaves no registers for that). Descriptors
    zero-fill reads past the edges and clip writes, so the main loop has no masks."""
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
    start = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    num_tiles = num_pid_m * num_pid_n
    tile_id_c = start - NUM_SMS  # separate counter for the epilogue (keeps prologue and epilogue apart)
    acc_dtype: tl.constexpr = tl.int32 if IS_INT8 else tl.float32
    for tile_id in tl.range(start, num_tiles, NUM_SMS, flatten=not BLOCK_SCALED):
        pid_m, pid_n = _tile_coords(tile_id, num_pid_m, num_pid_n, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc_dtype)
        if BLOCK_SCALED:
            offs_am = off_m + tl.arange(0, BLOCK_M)
            offs_am = tl.where(offs_am < M, offs_am, 0)
            offs_bn = off_n + tl.arange(0, BLOCK_N)
            offs_bn = tl.where(offs_bn < N, offs_bn, 0)
        for kt in range(k_tiles):
            a = a_desc.load([off_m, kt * BLOCK_K])
            b = b_desc.load([off_n, kt * BLOCK_K])
            if BLOCK_SCALED:
                scale = _block_scale(
                    sa_ptr, sb_ptr, kt, offs_am, off_n, offs_bn, stride_sak, stride_sbn, BLOCK_N, BLOCK_K
                )
                acc += tl.dot(a, b.T) * scale
            else:
                acc = tl.dot(a, b.T, acc, out_dtype=acc_dtype)
        tile_id_c += NUM_SMS
        pid_m, pid_n = _tile_coords(tile_id_c, num_pid_m, num_pid_n, GROUP_M)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        out = _epilogue(acc, offs_m, offs_n, M, N, sa_ptr, sb_ptr, bias_ptr, HAS_BIAS, BLOCK_SCALED, False)
        out = out.to(c_desc.dtype)
        if SUBTILE:  # two half-width stores: half the shared-memory staging, room for another stage
            halves = tl.permute(tl.reshape(out, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1))
            out0, out1 = tl.split(halves)
            c_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], out0)
            c_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N + BLOCK_N // 2], out1)
        else:
            c_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], out)


@triton.jit(do_not_specialize=["M"])
def w4a16_kernel(
    a_ptr,
    w_ptr,
    s_ptr,
    bias_ptr,
    c_ptr,
    M,
    N,
    K,
    stride_am,
    stride_wn,
    stride_sn,
    stride_cm,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    PRECISION: tl.constexpr,
    SWAP_AB: tl.constexpr,
):
    """A [M, K] bf16/fp16/fp32; W uint8 [N, K/2] (k = 2j in the low nibble of byte j, stored +8);
    scales fp32 [N, K/128]. Each W tile is unpacked, scaled in fp32 and rounded to A's dtype, so the
    tensor cores see a plain 16-bit GEMM. K % 128 == 0 and 128 % BLOCK_K == 0 (one scale per tile row)."""
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = _tile_coords(tl.program_id(0), num_pid_m, num_pid_n, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_am = tl.max_contiguous(tl.multiple_of(tl.where(offs_m < M, offs_m, 0), BLOCK_M), BLOCK_M)
    offs_bn = tl.max_contiguous(tl.multiple_of(tl.where(offs_n < N, offs_n, 0), BLOCK_N), BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    offs_kh = tl.arange(0, BLOCK_K // 2)
    a_ptrs = a_ptr + offs_am.to(tl.int64)[:, None] * stride_am + offs_k[None, :]  # [BM, BK]
    w_ptrs = w_ptr + offs_bn.to(tl.int64)[:, None] * stride_wn + offs_kh[None, :]  # [BN, BK/2]
    s_ptrs = s_ptr + offs_bn.to(tl.int64) * stride_sn  # [BN]
    if SWAP_AB:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kt in range(0, K // BLOCK_K):
        a = tl.load(a_ptrs)
        packed = tl.load(w_ptrs)
        scale = tl.load(s_ptrs + (kt * BLOCK_K) // 128)
        # nibble n -> float(n - 8) without an int-to-float conversion (a quarter-rate instruction):
        # the bits 0x4B000000 | n are the float 2^23 + n, and subtracting 2^23 + 8 is exact.
        nib = tl.interleave((packed & 0xF).to(tl.int32), (packed >> 4).to(tl.int32))  # [BN, BK], k order
        w = (nib | 0x4B000000).to(tl.float32, bitcast=True) - 8388616.0
        w = (w * scale[:, None]).to(a.dtype)  # the exact q * s of the reference, rounded once
        if INTERPRET:  # the interpreter's 16-bit dot is unreliable: same values, fp32 operands
            a = a.to(tl.float32)
            w = w.to(tl.float32)
        if SWAP_AB:  # acc^T = W A^T: the dequantized tile is wgmma's register operand, no shared-memory trip
            acc = tl.dot(w, tl.trans(a), acc, input_precision=PRECISION)
        else:
            acc = tl.dot(a, tl.trans(w), acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K // 2
    if SWAP_AB:
        out = tl.trans(acc)
    else:
        out = acc
    if HAS_BIAS:
        out = out + tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    c_ptrs = c_ptr + offs_m.to(tl.int64)[:, None] * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, out.to(c_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))
