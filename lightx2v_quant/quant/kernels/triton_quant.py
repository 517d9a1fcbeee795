"""Triton activation quantizers: per-token fp8/int8 (each row read once) and per-token-group-128 fp8.

Numerics are the reference's (``formats.py``) bit for bit: scale = max(amax, 1e-8) / qmax with IEEE
division, then q = cast(RN(x / scale)) with a saturating round-to-nearest-even fp8 cast, or
round-half-even then clamp for int8.

The quantizers are memory-bound (read 2 bytes, write 1 per element), so they are built to keep many
bytes in flight and to spend few instructions per element:
- one program per row; the row is loaded as up to four [R, G] tiles (R a power of two, G = one 16-byte
  vector per thread per tile row), all loads issued before the first use, so K needs no padding to a
  power of two;
- ``amax`` is taken in the input dtype (abs and max are exact in bf16/fp16), so the row stays in
  registers at 2 bytes per element until its scale is known;
- no per-element division: ``r = 1 / scale`` is computed once per row (IEEE), and ``_div_by_scale``
  turns x * r into the correctly rounded x / scale with FMA corrections (see there).

Under Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors) the quotient is a plain IEEE division
(the interpreter's ``fma`` is not fused), libdevice is unavailable (int8 rounding uses the 1.5 * 2^23
trick, also exact round-half-even), and its fp32 -> fp8 cast mis-rounds values that carry into the next
binade (values are first rounded onto the e4m3 grid in fp32, after which the cast is exact).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from lightx2v_quant.quant import formats as qf

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"  # read when triton.jit decides, at import
INTERPRET = tl.constexpr(INTERPRETING)

if not INTERPRETING:
    from triton.language.extra import libdevice
else:  # libdevice calls are extern functions, which the interpreter cannot run; never called there
    libdevice = None

_FP8 = "w8a8-fp8-channel"
_INT8 = "w8a8-int8-channel"
MAX_TILED_K = 16384  # rows up to this length are held in registers (Wan's largest K is 13824)
MAX_TILES = 4  # [R, G] tiles per row in the one-pass kernel


@triton.jit
def _round_half_even(y):
    """fp32 -> fp32 rounded to the nearest integer, ties to even (|y| < 2^22)."""
    if INTERPRET:
        r = (y + 12582912.0) - 12582912.0  # 1.5 * 2^23: the fp32 add rounds away the fraction (RNE)
    else:
        r = libdevice.rint(y)
    return r


@triton.jit
def _snap_to_e4m3(y):
    """Round fp32 values in [-448, 448] onto the float8_e4m3fn grid (RNE), staying in fp32.
    Interpreter only: the cast of the result is then exact."""
    a = tl.abs(y)
    e = ((a.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127  # floor(log2 a); -127 for 0
    e = tl.maximum(e, -6)  # below 2^-6 e4m3 is subnormal with a fixed spacing of 2^-9
    # spacing 2^(e-3); adding 1.5 * 2^23 * spacing rounds to a multiple of the spacing
    magic = (((e + 147) << 23) | 0x400000).to(tl.float32, bitcast=True)
    r = (a + magic) - magic
    return tl.where(y < 0, -r, r)


@triton.jit
def _div_by_scale(x, neg_s, r, SECOND_STEP: tl.constexpr):
    """RN(x / s) for fp32 x and a scale s > 0, given neg_s = -s and r = RN(1 / s): IEEE division
    without dividing (three instructions per element instead of a division's ten and a MUFU).

    y0 = RN(x * r) is within 1.5 ulp of x / s; a Newton step y1 = y0 + RN(x - s * y0) * r (two FMAs)
    makes it faithful, and by Markstein's theorem the same step from a faithful y1 with the correctly
    rounded reciprocal r gives exactly RN(x / s), the remainder x - s * y1 being exact. The theorem
    needs no underflow: here |x / s| <= qmax, r <= 448 / 1e-8, and quotients small enough for the
    remainder to underflow (|x / s| < 2^-67) cast to +-0 in fp8 and int8 either way. For bf16 and fp16
    inputs the first step alone is already exact (checked for every input in
    tests/quant/test_triton_div.py, which replays this sequence with exact FMAs): SECOND_STEP is for
    fp32 inputs. Only the sign of a zero quotient can differ (x = -0.0 gives +0.0): see the caller.
    """
    # A plain multiply: its only users are FMAs, so there is no add to contract it with (and
    # libdevice's mul_rn would flush subnormals).
    y = x * r
    y = tl.fma(tl.fma(neg_s, y, x), r, y)
    if SECOND_STEP:
        y = tl.fma(tl.fma(neg_s, y, x), r, y)
    return y


@triton.jit
def _quantize_values(x_in, scale, rcp, IS_INT8: tl.constexpr, ZERO_SIGN: tl.constexpr = True):
    """x_in (any float dtype), scale and rcp = 1 / scale fp32 (broadcastable) -> q int8 or e4m3.
    ZERO_SIGN=False skips restoring the sign of fp8 zeros (x = -0.0 then gives +0 instead of -0): for
    callers that only multiply q, where a zero's sign never changes a sum (the fused GEMM)."""
    x = x_in.to(tl.float32)
    if INTERPRET:
        y = tl.math.div_rn(x, scale)
    else:
        y = _div_by_scale(x, -scale, rcp, x_in.dtype == tl.float32)
    if IS_INT8:
        if INTERPRET:
            r = _round_half_even(y)
            q = tl.minimum(tl.maximum(r, -128.0), 127.0).to(tl.int8)
        else:
            # One instruction rounds half-to-even and converts (cvt.rni). No clamp: |x| <= amax and
            # scale = RN(amax / 127) bound |y| by 127 * (1 + 2^-23), which rounds to 127.
            q = libdevice.float2int_rn(y).to(tl.int8)
    else:
        if INTERPRET:
            y = _snap_to_e4m3(tl.minimum(tl.maximum(y, -448.0), 448.0))
        # A zero quotient takes the sign of x, as in IEEE division (the FMAs and the snap above turn
        # -0.0 into +0.0; bit-or is safe: y never has the opposite sign). On the GPU |y| <= 448 *
        # (1 + 2^-23) rounds to 448 at most: no clamp needed (the cast saturates anyway).
        if ZERO_SIGN:
            sign = x.to(tl.uint32, bitcast=True) & 0x80000000
            y = (y.to(tl.uint32, bitcast=True) | sign).to(tl.float32, bitcast=True)
        q = y.to(tl.float8e4nv)
    return q


@triton.jit
def _row_scale(amax, QMAX: tl.constexpr):
    """(scale, 1 / scale), both correctly rounded, from a row's |max| (any float dtype)."""
    scale = tl.math.div_rn(tl.maximum(amax.to(tl.float32), 1e-8), QMAX)
    return scale, tl.math.div_rn(tl.full(scale.shape, 1.0, tl.float32), scale)


@triton.jit
def _load_tile(row_ptr, col0, K, R: tl.constexpr, G: tl.constexpr, MASKED: tl.constexpr):
    """Row elements [col0, col0 + R*G) as an [R, G] tile, zero past K."""
    cols = col0 + tl.arange(0, R)[:, None] * G + tl.arange(0, G)[None, :]
    if MASKED:
        x = tl.load(row_ptr + cols, mask=cols < K, other=0.0)
    else:
        x = tl.load(row_ptr + cols)
    return x


@triton.jit
def _absmax(x):
    """|max| of a 2-D tile as a scalar (in x's dtype: exact)."""
    return tl.max(tl.max(tl.abs(x), axis=1), axis=0)


@triton.jit
def _store_tile(
    q_row_ptr, x, col0, K, scale, rcp, R: tl.constexpr, G: tl.constexpr, MASKED: tl.constexpr, IS_INT8
):
    cols = col0 + tl.arange(0, R)[:, None] * G + tl.arange(0, G)[None, :]
    q = _quantize_values(x, scale, rcp, IS_INT8)
    if MASKED:
        tl.store(q_row_ptr + cols, q, mask=cols < K)
    else:
        tl.store(q_row_ptr + cols, q)


@triton.jit
def _quantize_row(
    q_row,
    s_out,
    x0,
    x1,
    x2,
    x3,
    K,
    QMAX: tl.constexpr,
    IS_INT8: tl.constexpr,
    G: tl.constexpr,
    R0: tl.constexpr,
    R1: tl.constexpr,
    R2: tl.constexpr,
    R3: tl.constexpr,
    MASKED: tl.constexpr,
):
    """Per-token quantization of one row held as tiles x0..x3 of R0..R3 rows of G elements (R = 0: that
    tile is absent and its argument a placeholder): the row's |max|, its scale (stored at ``s_out``),
    then the quantized tiles. Shared by the per-token quantizer and fused producers (fused/gelu.py)."""
    m = _absmax(x0)
    if R1 > 0:
        m = tl.maximum(m, _absmax(x1))
    if R2 > 0:
        m = tl.maximum(m, _absmax(x2))
    if R3 > 0:
        m = tl.maximum(m, _absmax(x3))
    scale, rcp = _row_scale(m, QMAX)
    _store_tile(q_row, x0, 0, K, scale, rcp, R0, G, MASKED, IS_INT8)
    if R1 > 0:
        _store_tile(q_row, x1, R0 * G, K, scale, rcp, R1, G, MASKED, IS_INT8)
    if R2 > 0:
        _store_tile(q_row, x2, (R0 + R1) * G, K, scale, rcp, R2, G, MASKED, IS_INT8)
    if R3 > 0:
        _store_tile(q_row, x3, (R0 + R1 + R2) * G, K, scale, rcp, R3, G, MASKED, IS_INT8)
    tl.store(s_out, scale)


@triton.jit(do_not_specialize=["M"])
def _per_token_kernel(
    x_ptr,
    q_ptr,
    s_ptr,
    M,
    K,
    stride_xm,
    stride_qm,
    QMAX: tl.constexpr,
    IS_INT8: tl.constexpr,
    G: tl.constexpr,
    R0: tl.constexpr,
    R1: tl.constexpr,
    R2: tl.constexpr,
    R3: tl.constexpr,
    MASKED: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """One row per program, held in registers as tiles of R0, R1, R2, R3 (0 = absent) rows of G
    elements: all loads first, then the row's |max|, then quantize and store tile by tile.
    USE_PDL: let the GEMM that follows launch early (it waits for this grid before reading)."""
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xm
    q_row = q_ptr + row * stride_qm
    # Every load is issued before the first reduction (whose barriers would hold later loads back).
    # Tiles of different shapes get different register layouts, so each is reduced to a scalar on
    # its own rather than combined element-wise (which would shuffle the row through shared memory).
    x0 = _load_tile(x_row, 0, K, R0, G, MASKED)
    if R1 > 0:
        x1 = _load_tile(x_row, R0 * G, K, R1, G, MASKED)
    else:  # absent tile: a placeholder that is never read
        x1 = x0
    if R2 > 0:
        x2 = _load_tile(x_row, (R0 + R1) * G, K, R2, G, MASKED)
    else:  # absent tile: a placeholder that is never read
        x2 = x0
    if R3 > 0:
        x3 = _load_tile(x_row, (R0 + R1 + R2) * G, K, R3, G, MASKED)
    else:  # absent tile: a placeholder that is never read
        x3 = x0
    _quantize_row(q_row, s_ptr + row, x0, x1, x2, x3, K, QMAX, IS_INT8, G, R0, R1, R2, R3, MASKED)


@triton.jit(do_not_specialize=["M"])
def _per_token_long_kernel(
    x_ptr,
    q_ptr,
    s_ptr,
    M,
    K,
    stride_xm,
    stride_qm,
    QMAX: tl.constexpr,
    IS_INT8: tl.constexpr,
    BLOCK_K: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """Rows longer than MAX_TILED_K: one sweep for amax, a second (mostly from L2) to quantize."""
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xm
    q_row = q_ptr + row * stride_qm
    cols = tl.arange(0, BLOCK_K)
    m = tl.zeros([BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        x = tl.load(x_row + k0 + cols, mask=k0 + cols < K, other=0.0)
        m = tl.maximum(m, tl.abs(x).to(tl.float32))
    scale, rcp = _row_scale(tl.max(m, axis=0), QMAX)
    for k0 in range(0, K, BLOCK_K):
        x = tl.load(x_row + k0 + cols, mask=k0 + cols < K, other=0.0)
        q = _quantize_values(x, scale, rcp, IS_INT8)
        tl.store(q_row + k0 + cols, q, mask=k0 + cols < K)
    tl.store(s_ptr + row, scale)


@triton.jit(do_not_specialize=["M"])
def _per_group_kernel(
    x_ptr,
    q_ptr,
    st_ptr,
    M,
    stride_xm,
    stride_qm,
    stride_st,
    GROUP: tl.constexpr,
    ROWS: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """One program = ROWS rows x one group of GROUP columns. Scales go to st [K/GROUP, M] (M-major)."""
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    g = tl.program_id(1)
    row_ok = rows < M
    rows64 = rows.to(tl.int64)
    cols = g * GROUP + tl.arange(0, GROUP)
    mask = row_ok[:, None]
    x = tl.load(x_ptr + rows64[:, None] * stride_xm + cols[None, :], mask=mask, other=0.0)
    scale, rcp = _row_scale(tl.max(tl.abs(x), axis=1), 448.0)
    q = _quantize_values(x, scale[:, None], rcp[:, None], False)
    tl.store(q_ptr + rows64[:, None] * stride_qm + cols[None, :], q, mask=mask)
    tl.store(st_ptr + g.to(tl.int64) * stride_st + rows, scale, mask=row_ok)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)  # plain ints: triton.cdiv goes through Triton's constexpr machinery on every call


def next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


@functools.lru_cache(maxsize=None)
def pdl_enabled(device: torch.device) -> bool:
    """Programmatic dependent launch between quantizer and GEMM: Hopper+, compiled mode, not disabled
    with LIGHTX2V_QUANT_TRITON_PDL=0 (read once per device)."""
    if INTERPRETING or device.type != "cuda" or os.environ.get("LIGHTX2V_QUANT_TRITON_PDL", "1") == "0":
        return False
    return torch.cuda.get_device_capability(device)[0] >= 9


# -- launching -----------------------------------------------------------------------------------------
QUANT_PARAMS = {_FP8: (qf.FP8_DTYPE, qf.FP8_MAX, False), _INT8: (torch.int8, qf.INT8_MAX, True)}


def tile_rows(k: int, num_warps: int, elem_bytes: int) -> tuple[int, tuple[int, int, int, int], bool]:
    """(G, (R0, R1, R2, R3), masked) for a row of k elements: G = one 16-byte vector per thread, the
    R's the binary digits of ceil(k / G), largest first (the fourth rounded up), masked if they cover
    more than k."""
    g = (16 // elem_bytes) * 32 * num_warps
    left = cdiv(k, g)
    rows: list[int] = []
    while left and len(rows) < MAX_TILES - 1:
        r = 1 << (left.bit_length() - 1)
        rows.append(r)
        left -= r
    if left:
        rows.append(next_pow2(left))
    padded = g * sum(rows)
    return g, tuple(rows + [0] * (MAX_TILES - len(rows))), padded != k  # type: ignore[return-value]


def per_token_launch(
    x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, fmt_name: str, num_warps: int
) -> tuple[triton.JITFunction, tuple, dict]:
    """(kernel, positional args, launch keywords) of the per-token quantizer; grid = (M,)."""
    m, k = x.shape
    _, qmax, is_int8 = QUANT_PARAMS[fmt_name]
    meta = dict(QMAX=qmax, IS_INT8=is_int8, USE_PDL=pdl_enabled(x.device), num_warps=num_warps)
    args = (x, q, scale, m, k, x.stride(0), q.stride(0))
    if k <= MAX_TILED_K:
        g, (r0, r1, r2, r3), masked = tile_rows(k, num_warps, x.element_size())
        meta.update(G=g, R0=r0, R1=r1, R2=r2, R3=r3, MASKED=masked)
        return _per_token_kernel, args, meta
    meta.update(BLOCK_K=long_block_k(num_warps, x.element_size()))
    return _per_token_long_kernel, args, meta


def long_block_k(num_warps: int, elem_bytes: int) -> int:
    """Columns per sweep step of the two-sweep kernels for rows longer than MAX_TILED_K: four 16-byte
    vectors per thread."""
    return (16 // elem_bytes) * 32 * num_warps * 4


def per_group_launch(
    x: torch.Tensor, q: torch.Tensor, scale_t: torch.Tensor, group: int
) -> tuple[triton.JITFunction, tuple, tuple, dict]:
    """(kernel, grid, positional args, launch keywords) of the per-token-group quantizer."""
    m, k = x.shape
    rows = 32
    args = (x, q, scale_t, m, x.stride(0), q.stride(0), scale_t.stride(0))
    meta = dict(GROUP=group, ROWS=rows, USE_PDL=pdl_enabled(x.device), num_warps=4)
    return _per_group_kernel, (cdiv(m, rows), k // group), args, meta
