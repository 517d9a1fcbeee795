"""LightX2V's converter numerics for fp8 / int8 per-channel weights, byte for byte.

Its tools/convert/quant.py as run on CPU: amax, scale and division in the SOURCE dtype, int8 rounded
half to even, fp8 rounded the way qtorch's ``float_quantize(x, 4, 3, "nearest")`` does (ties away
from zero; subnormals through an fp32 add of +-2^-6; -0.0 and values that round to zero become +0).
The scale keeps the source dtype. Scales are divided on the CPU, so a CUDA weight gives the same bytes
(on CUDA, dividing by a Python scalar multiplies by its reciprocal, which can move a scale by one ulp).
These are the weight quantizers of the fp8 / int8 formats (formats.py), so a file converted here and
a checkpoint quantized while loading hold the same bytes as LightX2V's files.
"""

from __future__ import annotations

import torch

FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max, LightX2V's qmax
INT8_QMAX = 127.0
LIGHTX2V_AMAX_FLOOR = 1e-5  # LightX2V clamps the row amax to this (formats.py uses 1e-8)
_ROWS_PER_CHUNK_ELEMS = 1 << 24  # rows are processed in chunks of ~16M elements to bound temporaries

# e4m3 as qtorch sees it: 3 mantissa bits, smallest normal exponent -6, largest stored exponent 8.
_MAN_DROP = 23 - 3  # fp32 mantissa bits dropped
_HALF = 1 << (_MAN_DROP - 1)  # added before truncation: round half away from zero (sign-magnitude)
_KEEP = -(1 << _MAN_DROP)  # int32 mask clearing the dropped bits

_MAX_BIASED = 127 + 8  # qtorch keeps exponents up to 2^8 (it reserves none for inf/nan)
_MAX_MAGNITUDE_BITS = (_MAX_BIASED << 23) | (0b111 << _MAN_DROP)  # 1.875 * 2^8 = 480
_SUBNORMAL_SHIFT = 2.0**-6


def qtorch_e4m3_round(x: torch.Tensor, within_448: bool = False) -> torch.Tensor:
    """fp32 -> fp32 on the e4m3 grid, as qtorch 0.3.0 ``float_quantize(x, exp=4, man=3, "nearest")``.

    Normal range (|x| >= 2^-6): add half an ulp to the fp32 bit pattern and truncate to 3 mantissa
    bits (ties go away from zero), saturating exponents above 8. Below 2^-6: add +-2^-6 in fp32 (a
    first rounding), truncate the same way, subtract +-2^-6 again; -0.0 and tiny values end as +0.0.
    ``within_448=True`` skips the saturation pass (the caller clipped to +-448 already).
    """
    if x.dtype != torch.float32:
        raise TypeError(f"qtorch_e4m3_round takes float32, got {x.dtype}")
    x = x.contiguous()
    bits = x.view(torch.int32)
    rounded = bits + _HALF
    rounded.bitwise_and_(_KEEP)
    magnitude = x.abs()
    if not within_448 and not bool(
        (magnitude < 464.0).all()
    ):  # rounds past 1.875 * 2^8 (or inf / nan): saturate, sign kept
        too_big = ((rounded >> 23) & 0xFF) > _MAX_BIASED
        sign_bit = bits & torch.iinfo(torch.int32).min
        rounded = torch.where(too_big, sign_bit | _MAX_MAGNITUDE_BITS, rounded)
    out = rounded.view(torch.float32)
    small = magnitude < _SUBNORMAL_SHIFT  # fp32 exponent below -6 (zeros included): the shift path
    del magnitude, rounded
    if bool(small.any()):
        xs = x[small]
        shift = torch.where(xs.view(torch.int32) < 0, -_SUBNORMAL_SHIFT, _SUBNORMAL_SHIFT).to(torch.float32)
        shifted = (xs + shift).view(torch.int32)  # the first rounding, in fp32
        out[small] = ((shifted + _HALF) & _KEEP).view(torch.float32) - shift
    return out


def _row_chunks(n_rows: int, n_cols: int) -> range:
    step = max(1, _ROWS_PER_CHUNK_ELEMS // max(1, n_cols))
    return range(0, n_rows, step)


def check_weight(w: torch.Tensor) -> None:
    if w.dim() != 2:
        raise ValueError(f"only 2-D weights are quantized, got shape {list(w.shape)}")
    if not w.is_floating_point() or w.element_size() == 1:
        raise ValueError(f"cannot quantize a {w.dtype} weight: it is already quantized or not a float tensor")


def no_nan(amax: torch.Tensor) -> torch.Tensor:
    """A NaN anywhere in a row / group makes its amax NaN: checking the amax is checking the weight."""
    if bool(torch.isnan(amax).any()):
        raise ValueError("the weight contains NaN values")
    return amax


def _channel_scale(w: torch.Tensor, qmax: float) -> torch.Tensor:
    """[N, 1] scale in w's dtype: clamp(amax_row, 1e-5) / qmax, the division done on the CPU."""
    amax = no_nan(w.abs().amax(dim=1, keepdim=True)).clamp(min=LIGHTX2V_AMAX_FLOOR)
    return (amax.cpu() / qmax).to(w.device)


def lightx2v_fp8_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float -> (float8_e4m3fn [N, K], scale [N, 1] in w's dtype), LightX2V's converter bytes."""
    check_weight(w)
    scale = _channel_scale(w, FP8_MAX)
    q = torch.empty(w.shape, dtype=torch.float8_e4m3fn, device=w.device)
    step = _row_chunks(*w.shape).step
    # A zero scale (an all-zero fp16 row: 1e-5 / 448 underflows) gives 0/0 = NaN, which qtorch saturates
    # to -480 and the cast to -448; otherwise the clip leaves nothing to saturate.
    clipped = not bool((scale == 0).any())
    for r in _row_chunks(*w.shape):
        scaled = torch.clip(w[r : r + step] / scale[r : r + step], -FP8_MAX, FP8_MAX)  # source dtype
        q[r : r + step] = qtorch_e4m3_round(scaled.float(), within_448=clipped).to(
            torch.float8_e4m3fn
        )  # exact
    return q, scale


def lightx2v_int8_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float -> (int8 [N, K], scale [N, 1] in w's dtype), LightX2V's converter bytes."""
    check_weight(w)
    scale = _channel_scale(w, INT8_QMAX)
    q = torch.empty(w.shape, dtype=torch.int8, device=w.device)
    step = _row_chunks(*w.shape).step
    for r in _row_chunks(*w.shape):
        q[r : r + step] = torch.clamp(torch.round(w[r : r + step] / scale[r : r + step]), -128, 127).to(
            torch.int8
        )
    return q, scale
