"""GELU(tanh) of the Wan FFN hidden, emitted per-token quantized (fp8 e4m3 / int8) for the down projection,
in one Triton pass: read the bf16 hidden once, write 1 byte per element and one scale per token.

Unfused, ``F.gelu`` writes a new bf16 hidden ([8192, 13824] per 480p FFN chunk: 0.21 GiB) and the
down projection's quantizer reads it again. Numerics are the unfused path's bit for bit: GELU in fp32 with
PyTorch's formula and operation order (``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))``),
rounded to the hidden's dtype FIRST (as ``nn.GELU`` returns it), then the format's per-token quantization
(the ``quant.kernels.triton_quant`` helpers, which equal ``formats.py`` bit for bit).

Rows up to ``MAX_TILED_K`` (Wan's 13824 and 8960 included) stay in registers: the GELU is computed once and
kept in the hidden's dtype (2 bytes per element) until the row's scale is known. Longer rows make two sweeps
(absmax, then quantize) and recompute the GELU in the second: it is deterministic, so both sweeps see the
same values, and recomputing costs less than writing and re-reading a scratch copy.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from lightx2v_quant.quant import formats as qf
from lightx2v_quant.quant.activation import PER_TOKEN_FORMATS, QuantizedActivation
from lightx2v_quant.quant.kernels.triton_quant import (
    INTERPRET,
    MAX_TILED_K,
    QUANT_PARAMS,
    _load_tile,
    _quantize_row,
    _quantize_values,
    _row_scale,
    libdevice,
    long_block_k,
    tile_rows,
)
from lightx2v_quant.quant.kernels.triton_tuning import default_quant_config

# PyTorch's constants (ATen's gelu_tanh: opmath_t kBeta = M_SQRT2 * M_2_SQRTPI * 0.5, kKappa = 0.044715),
# rounded to fp32 here so that the kernel sees exactly the same fp32 values.
_M_SQRT2 = 1.41421356237309504880
_M_2_SQRTPI = 1.12837916709551257390
K_BETA = tl.constexpr(float(torch.tensor(_M_SQRT2 * _M_2_SQRTPI * 0.5, dtype=torch.float32)))
K_KAPPA = tl.constexpr(float(torch.tensor(0.044715, dtype=torch.float32)))
assert math.isclose(K_BETA.value, math.sqrt(2 / math.pi), rel_tol=1e-7)


@triton.jit
def _gelu_tanh(x, FAST: tl.constexpr = False):
    """fp32 GELU(tanh) in ATen's order: (0.5 * x) * (1 + tanh(kBeta * (x + kKappa * ((x * x) * x)))).
    ``FAST``: the tanh from the GPU's tanh.approx.f32 (one MUFU instruction, max relative error ~2^-11,
    below a bf16 rounding) instead of libdevice's ~20-instruction tanhf, which makes the fused kernel
    compute-bound on Hopper."""
    # x + kKappa * x^3 as one FMA, as nvcc contracts it in ATen (explicit: not left to Triton's fp-fusion
    # default, which Triton 3.10 turns off)
    inner = K_BETA * tl.fma(K_KAPPA, x * x * x, x)
    if INTERPRET:
        # No libdevice in the interpreter: tanh(u) = 2 / (1 + exp(-2u)) - 1 (u >= -40: no exp overflow;
        # tanh(-40) is -1 in fp32). Where 1 + tanh(u) cancels (x << 0) the last bits of the tanh decide the
        # bf16 result, so this matches PyTorch's GELU closely but not bit for bit (docs/speed.md).
        t = 2.0 / (1.0 + tl.exp(-2.0 * tl.maximum(inner, -40.0))) - 1.0
    elif FAST:
        t = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=r,r", [inner], dtype=tl.float32, is_pure=True, pack=1)
    else:
        t = libdevice.tanh(inner)  # __nv_tanhf: what ATen's CUDA kernel calls
    return 0.5 * x * (1.0 + t)


@triton.jit
def _gelu_rounded(x_in, IS_BF16: tl.constexpr, FAST: tl.constexpr = False):
    """GELU of a tile in its own dtype (bf16 / fp16): computed in fp32, rounded to nearest even."""
    y = _gelu_tanh(x_in.to(tl.float32), FAST)
    if INTERPRET and IS_BF16:
        # The interpreter truncates fp32 -> bf16 (Triton 3.9): round to nearest even on the bits first,
        # after which the cast is exact. (Inf / NaN do not occur in these tests.)
        b = y.to(tl.uint32, bitcast=True)
        b = b + 0x7FFF + ((b >> 16) & 1)
        y = ((b >> 16) << 16).to(tl.float32, bitcast=True)
    return y.to(x_in.dtype)


@triton.jit
def _gelu_tile(
    x_row, col0, K, R: tl.constexpr, G: tl.constexpr, MASKED: tl.constexpr, IS_BF16: tl.constexpr, FAST: tl.constexpr
):
    """GELU of row elements [col0, col0 + R*G) as an [R, G] tile (0 past K: GELU(0) = 0)."""
    return _gelu_rounded(_load_tile(x_row, col0, K, R, G, MASKED), IS_BF16, FAST)


@triton.jit(do_not_specialize=["L"])
def _gelu_quant_kernel(
    x_ptr,
    q_ptr,
    s_ptr,
    L,
    K,
    stride_xb,
    stride_xl,
    QMAX: tl.constexpr,
    IS_INT8: tl.constexpr,
    IS_BF16: tl.constexpr,
    G: tl.constexpr,
    R0: tl.constexpr,
    R1: tl.constexpr,
    R2: tl.constexpr,
    R3: tl.constexpr,
    MASKED: tl.constexpr,
    FAST: tl.constexpr = False,
):
    """One token per program, its GELU held in registers as tiles of R0..R3 rows of G elements (the
    per-token quantizer's layout, ``triton_quant.tile_rows``); q is contiguous [B * L, K]."""
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + (row // L) * stride_xb + (row % L) * stride_xl
    q_row = q_ptr + row * K
    g0 = _gelu_tile(x_row, 0, K, R0, G, MASKED, IS_BF16, FAST)
    if R1 > 0:
        g1 = _gelu_tile(x_row, R0 * G, K, R1, G, MASKED, IS_BF16, FAST)
    else:  # absent tile: a placeholder that is never read
        g1 = g0
    if R2 > 0:
        g2 = _gelu_tile(x_row, (R0 + R1) * G, K, R2, G, MASKED, IS_BF16, FAST)
    else:  # absent tile: a placeholder that is never read
        g2 = g0
    if R3 > 0:
        g3 = _gelu_tile(x_row, (R0 + R1 + R2) * G, K, R3, G, MASKED, IS_BF16, FAST)
    else:  # absent tile: a placeholder that is never read
        g3 = g0
    _quantize_row(q_row, s_ptr + row, g0, g1, g2, g3, K, QMAX, IS_INT8, G, R0, R1, R2, R3, MASKED)


@triton.jit(do_not_specialize=["L"])
def _gelu_quant_long_kernel(
    x_ptr,
    q_ptr,
    s_ptr,
    L,
    K,
    stride_xb,
    stride_xl,
    QMAX: tl.constexpr,
    IS_INT8: tl.constexpr,
    IS_BF16: tl.constexpr,
    BLOCK_K: tl.constexpr,
    FAST: tl.constexpr = False,
):
    """Rows longer than MAX_TILED_K: one sweep for the absmax of the GELU, a second (its reads mostly from
    L2) that recomputes the GELU and quantizes it."""
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + (row // L) * stride_xb + (row % L) * stride_xl
    q_row = q_ptr + row * K
    cols = tl.arange(0, BLOCK_K)
    m = tl.zeros([BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        x = tl.load(x_row + k0 + cols, mask=k0 + cols < K, other=0.0)
        m = tl.maximum(m, tl.abs(_gelu_rounded(x, IS_BF16, FAST)).to(tl.float32))
    scale, rcp = _row_scale(tl.max(m, axis=0), QMAX)
    for k0 in range(0, K, BLOCK_K):
        x = tl.load(x_row + k0 + cols, mask=k0 + cols < K, other=0.0)
        q = _quantize_values(_gelu_rounded(x, IS_BF16, FAST), scale, rcp, IS_INT8)
        tl.store(q_row + k0 + cols, q, mask=k0 + cols < K)
    tl.store(s_ptr + row, scale)


@triton.jit
def _gelu_kernel(x_ptr, y_ptr, N, IS_BF16: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < N, other=0.0)
    tl.store(y_ptr + offs, _gelu_rounded(x, IS_BF16), mask=offs < N)


def gelu_values(h: torch.Tensor) -> torch.Tensor:
    """The kernels' GELU alone, in h's dtype (contiguous h): for measuring it against ``F.gelu``."""
    if h.dtype not in (torch.bfloat16, torch.float16) or not h.is_contiguous():
        raise ValueError(f"gelu_values takes a contiguous bf16 / fp16 tensor, got {h.dtype}")
    y = torch.empty_like(h)
    block = 4096
    if h.numel():
        _gelu_kernel[(-(-h.numel() // block),)](
            h, y, h.numel(), IS_BF16=h.dtype == torch.bfloat16, BLOCK=block
        )
    return y


def _check(h: torch.Tensor, quant: str) -> None:
    if quant not in PER_TOKEN_FORMATS:
        raise ValueError(f"gelu_quantize: quant must be one of {sorted(PER_TOKEN_FORMATS)}, got {quant!r}")
    if h.dim() not in (2, 3) or h.shape[-1] == 0:
        raise ValueError(f"gelu_quantize takes h [B, L, F] or [L, F] with F > 0, got {list(h.shape)}")
    if h.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"gelu_quantize takes a bf16 / fp16 hidden (the run dtype), got {h.dtype}")
    if h.stride(-1) != 1:
        raise ValueError("gelu_quantize needs h contiguous in its last dim (call .contiguous() first)")


def gelu_quantize(h: torch.Tensor, quant: str, fast: bool = False) -> QuantizedActivation:
    """Triton: ``quantize(F.gelu(h, approximate="tanh"))`` for h [B, L, F] or [L, F] (bf16 / fp16, last dim
    contiguous) -> QuantizedActivation with data [..., F] fp8 e4m3 (``quant="fp8"``) or int8 (``"int8"``),
    one fp32 scale per token [..., 1], dtype h.dtype. ``fast``: the GPU's approximate tanh instead of
    PyTorch's (bf16 GELU values then differ from ``F.gelu`` in the last bit for a small share of elements)."""
    _check(h, quant)
    q, scale = _gelu_quant_op(h, quant, fast)
    return QuantizedActivation(q, scale, h.dtype)


@torch.library.custom_op("lightx2v_quant::gelu_quantize", mutates_args=())
def _gelu_quant_op(h: torch.Tensor, quant: str, fast: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    # a custom op: opaque to torch.compile (no graph break, no tracing into the launch)
    q, scale = _empty_outputs(h, quant)
    if q.numel():
        launch(h, q, scale, quant, fast=fast)
    return q, scale


@_gelu_quant_op.register_fake
def _(h, quant, fast=False):
    return _empty_outputs(h, quant)


def _empty_outputs(h: torch.Tensor, quant: str) -> tuple[torch.Tensor, torch.Tensor]:
    qdtype = QUANT_PARAMS[PER_TOKEN_FORMATS[quant]][0]
    q = torch.empty(h.shape, dtype=qdtype, device=h.device)
    return q, torch.empty(*h.shape[:-1], 1, dtype=torch.float32, device=h.device)


def launch(
    h: torch.Tensor,
    q: torch.Tensor,
    scale: torch.Tensor,
    quant: str,
    num_warps: int | None = None,
    tiled: bool | None = None,
    fast: bool = False,
) -> None:
    """Unchecked launch into contiguous q [..., F] and scale [..., 1]. ``num_warps`` (default: the per-token
    quantizer's) and ``tiled`` (default: F <= MAX_TILED_K; False forces the two-sweep kernel) are for tests
    and benchmarks."""
    x = h if h.dim() == 3 else h.unsqueeze(0)
    B, L, K = x.shape
    _, qmax, is_int8 = QUANT_PARAMS[PER_TOKEN_FORMATS[quant]]
    warps = num_warps or default_quant_config(K, x.element_size()).num_warps
    meta = {"QMAX": qmax, "IS_INT8": is_int8, "IS_BF16": x.dtype == torch.bfloat16, "FAST": fast, "num_warps": warps}
    args = (x, q, scale, L, K, x.stride(0), x.stride(1))
    if (K <= MAX_TILED_K) if tiled is None else tiled:
        g, (r0, r1, r2, r3), masked = tile_rows(K, warps, x.element_size())
        _gelu_quant_kernel[(B * L,)](*args, G=g, R0=r0, R1=r1, R2=r2, R3=r3, MASKED=masked, **meta)
    else:
        _gelu_quant_long_kernel[(B * L,)](*args, BLOCK_K=long_block_k(warps, x.element_size()), **meta)


def gelu_quantize_reference(h: torch.Tensor, quant: str) -> QuantizedActivation:
    """The unfused numerics with PyTorch ops: ``nn.GELU(approximate="tanh")`` in h's dtype, then the format's
    reference per-token quantization (``formats.py``)."""
    y = F.gelu(h, approximate="tanh")
    q, s = qf.FORMATS[PER_TOKEN_FORMATS[quant]].quantize_activation(y.reshape(-1, y.shape[-1]))
    return QuantizedActivation(q.view(y.shape), s.view(*y.shape[:-1], 1), h.dtype)


def SASS_CASES():  # picked up by benchmarks/triton_sass.py
    """The Wan-14B FFN hidden (K = 13824, bf16) at 8 warps (the default) and 16: registers and spills."""
    ints = ("L", "K", "stride_xb", "stride_xl")
    sig = {"x_ptr": "*bf16", "q_ptr": "*fp8e4nv", "s_ptr": "*fp32", **{n: "i32" for n in ints}}
    for warps in (8, 16):
        g, (r0, r1, r2, r3), masked = tile_rows(13824, warps, 2)
        for name, out, qmax, is_int8 in (("fp8", "*fp8e4nv", 448.0, False), ("int8", "*i8", 127.0, True)):
            const = {
                "QMAX": qmax,
                "IS_INT8": is_int8,
                "IS_BF16": True,
                "G": g,
                "R0": r0,
                "R1": r1,
                "R2": r2,
                "R3": r3,
                "MASKED": masked,
            }
            opts = {"num_warps": warps}
            yield (
                f"gelu_{name}_13824_w{warps}",
                _gelu_quant_kernel,
                dict(sig, q_ptr=out),
                const,
                opts,
                list(ints[1:]),
            )
