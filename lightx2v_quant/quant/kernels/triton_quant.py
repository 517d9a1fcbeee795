"""Triton activation quantizers: per-token fp8/int8 (one pass over each row) and per-token-group-128 fp8.

Same numerics as ``formats.py``: scale = max(amax, 1e-8) / qmax and q = cast(x / scale), with IEEE
division (``div_rn``), a saturating round-to-nearest-even fp8 cast, and round-half-even then clamp for
int8. On a GPU the results are bit-identical to the reference. Under Triton's interpreter
(``TRITON_INTERPRET=1``, CPU tensors) two interpreter gaps are bridged so that tests stay exact: libdevice
is unavailable (int8 rounding uses the 1.5 * 2^23 trick, also exact round-half-even) and the
interpreter's fp32 -> fp8 cast mis-rounds values that carry into the next binade (values are first
rounded onto the e4m3 grid in fp32 arithmetic, after which the cast is exact).
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
MAX_ONE_PASS_K = 16384  # rows up to this length stay in registers (Wan's largest K is 13824)


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
def _quantize_values(x, scale, IS_INT8: tl.constexpr):
    """x [R, C] fp32, scale [R, 1] fp32 -> q [R, C] int8 or float8_e4m3fn (the reference cast)."""
    y = tl.math.div_rn(x, scale)
    if IS_INT8:
        r = _round_half_even(y)
        q = tl.minimum(tl.maximum(r, -128.0), 127.0).to(tl.int8)
    else:
        y = tl.minimum(tl.maximum(y, -448.0), 448.0)
        if INTERPRET:
            y = _snap_to_e4m3(y)
        q = y.to(tl.float8e4nv)
    return q


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
    ROWS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    ONE_PASS: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """ROWS rows per program. ONE_PASS: the row is read once and kept in registers (K <= BLOCK_K);
    otherwise a first sweep finds amax and a second (served mostly by L2) quantizes.
    USE_PDL: let the GEMM that follows launch early (it waits for this kernel before reading)."""
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < M
    rows64 = rows.to(tl.int64)
    cols = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + rows64[:, None] * stride_xm
    q_rows = q_ptr + rows64[:, None] * stride_qm
    if ONE_PASS:
        mask = row_ok[:, None] & (cols[None, :] < K)
        x = tl.load(x_rows + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        amax = tl.max(tl.abs(x), axis=1)
        scale = tl.math.div_rn(tl.maximum(amax, 1e-8), QMAX)  # [ROWS]
        q = _quantize_values(x, scale[:, None], IS_INT8)
        tl.store(q_rows + cols[None, :], q, mask=mask)
    else:
        amax = tl.zeros([ROWS], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            mask = row_ok[:, None] & (cols[None, :] + k0 < K)
            x = tl.load(x_rows + k0 + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.max(tl.abs(x), axis=1))
        scale = tl.math.div_rn(tl.maximum(amax, 1e-8), QMAX)
        for k0 in range(0, K, BLOCK_K):
            mask = row_ok[:, None] & (cols[None, :] + k0 < K)
            x = tl.load(x_rows + k0 + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            tl.store(q_rows + k0 + cols[None, :], _quantize_values(x, scale[:, None], IS_INT8), mask=mask)
    tl.store(s_ptr + rows, scale, mask=row_ok)


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
    x = tl.load(x_ptr + rows64[:, None] * stride_xm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    amax = tl.max(tl.abs(x), axis=1)
    scale = tl.math.div_rn(tl.maximum(amax, 1e-8), 448.0)
    q = _quantize_values(x, scale[:, None], False)
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


def _row_layout(x: torch.Tensor) -> torch.Tensor:
    """Kernels read rows with unit column stride; anything else is copied once."""
    if x.dim() != 2:
        raise ValueError(f"expected a 2-D activation [M, K], got shape {tuple(x.shape)}")
    return x if x.stride(1) == 1 else x.contiguous()


@functools.lru_cache(maxsize=None)
def _per_token_launch_params(k: int) -> tuple[int, int, int, bool]:
    """(ROWS, BLOCK_K, num_warps, one_pass): ~4-16K elements per program, 16-byte accesses per thread."""
    block_k = next_pow2(k)
    one_pass = block_k <= MAX_ONE_PASS_K
    if not one_pass:
        block_k = 4096
    rows = max(1, min(16, 4096 // block_k))
    elems = rows * block_k
    num_warps = 4 if elems <= 2048 else 8 if elems <= 8192 else 16
    return rows, block_k, num_warps, one_pass


def quantize_per_token(x: torch.Tensor, fmt_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] (bf16/fp16/fp32) -> (q [M, K] fp8 or int8, scale [M, 1] fp32), as the format's reference."""
    if fmt_name == _FP8:
        qdtype, qmax, is_int8 = qf.FP8_DTYPE, qf.FP8_MAX, False
    elif fmt_name == _INT8:
        qdtype, qmax, is_int8 = torch.int8, qf.INT8_MAX, True
    else:
        raise ValueError(f"quantize_per_token handles {_FP8} and {_INT8}, not {fmt_name!r}")
    x = _row_layout(x)
    m, k = x.shape
    q = torch.empty((m, k), dtype=qdtype, device=x.device)
    scale = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    if k == 0:
        raise ValueError("cannot quantize activations with K == 0")
    if m == 0:
        return q, scale
    rows, block_k, num_warps, one_pass = _per_token_launch_params(k)
    _per_token_kernel[(cdiv(m, rows),)](
        x,
        q,
        scale,
        m,
        k,
        x.stride(0),
        q.stride(0),
        QMAX=qmax,
        IS_INT8=is_int8,
        ROWS=rows,
        BLOCK_K=block_k,
        ONE_PASS=one_pass,
        USE_PDL=pdl_enabled(x.device),
        num_warps=num_warps,
    )
    return q, scale


def quantize_per_token_group(x: torch.Tensor, group: int = qf.GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (q [M, K] fp8, scale [M, K/group] fp32) as ``Fp8Block128.quantize_activation``.

    The scale is returned as a transposed view of an M-major [K/group, M] buffer: the block GEMM reads
    one K-group's scales for a tile of rows as a contiguous vector.
    """
    x = _row_layout(x)
    m, k = x.shape
    if k % group:
        raise ValueError(f"per-token-group quantization needs K % {group} == 0, got K={k}")
    q = torch.empty((m, k), dtype=qf.FP8_DTYPE, device=x.device)
    scale_t = torch.empty((k // group, m), dtype=torch.float32, device=x.device)
    if m and k:
        rows = 32
        _per_group_kernel[(cdiv(m, rows), k // group)](
            x,
            q,
            scale_t,
            m,
            x.stride(0),
            q.stride(0),
            scale_t.stride(0),
            GROUP=group,
            ROWS=rows,
            USE_PDL=pdl_enabled(x.device),
            num_warps=4,
        )
    return q, scale_t.t()
