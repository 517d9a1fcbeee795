"""Layout facts the Marlin adapter needs, as pure PyTorch (tested on CPU).

- GPTQ packing, the input of vLLM's ``gptq_marlin_repack``: int32 [K/8, N], element (i, n) holds the
  eight 4-bit values of rows k = 8i..8i+7 of column n, row 8i+j in bits 4j..4j+3, stored +8 (vLLM's
  scalar type ``uint4b8``). Our disk layout (formats.Int4G128) is uint8 [N, K/2] with the even k in the
  low nibble, also +8: the four bytes of an int32 (little-endian) are exactly k = 8i..8i+7 of one row,
  so the conversion is a reinterpretation plus a transpose.
- Marlin's scale order: within each run of 64 scales of a [groups, N] table, column c of an 8x8 tile is
  read row-wise (index i + 8 j); for a single group (per-channel) each run of 32 is reordered as
  ``SINGLE_PERM``. The bias uses the single-group order.
- vLLM's ``ScalarType.id`` bit layout (``vllm/scalar_type.py``): exponent bits (8), mantissa bits (8),
  signed (1), bias (32), finite-values-only (1), NaN representation (8), from the low bits up;
  uint4b8 = (0, 4, unsigned, bias 8, not finite-only, NaN repr 1) = 2**50 + 1049600.
"""

from __future__ import annotations

import sys

import torch

GROUPED_PERM = [i + 8 * j for i in range(8) for j in range(8)]  # 64 entries: transpose of an 8x8 tile
SINGLE_PERM = [2 * i + j for i in range(4) for j in (0, 1, 8, 9, 16, 17, 24, 25)]  # 32 entries


def scalar_type_id(
    exponent: int, mantissa: int, signed: bool, bias: int, finite_values_only: bool = False, nan_repr: int = 1
) -> int:
    """vLLM's integer id of a ScalarType (what its C++ ops take as ``b_type_id``).

    ``nan_repr`` defaults to 1 (IEEE 754), the dataclass default that vLLM's integer types keep too.
    """
    value, offset = 0, 0
    for field, width in (
        (exponent, 8),
        (mantissa, 8),
        (int(signed), 1),
        (bias, 32),
        (int(finite_values_only), 1),
        (nan_repr, 8),
    ):
        value |= (int(field) & ((1 << width) - 1)) << offset
        offset += width
    return value


UINT4B8_ID = scalar_type_id(0, 4, False, 8)  # vllm.scalar_type.scalar_types.uint4b8.id


def to_gptq(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K/2] (our int4-g128 weight) -> GPTQ int32 [K/8, N], contiguous."""
    if sys.byteorder != "little":
        raise RuntimeError("int4 repacking assumes a little-endian host")
    n, half_k = packed.shape
    if half_k % 4:
        raise ValueError(f"int4 weight needs K % 8 == 0, got K={2 * half_k}")
    return packed.contiguous().view(torch.int32).t().contiguous()  # [N, K/8] -> [K/8, N]


def permute_scales(scales_gn: torch.Tensor) -> torch.Tensor:
    """Scales [groups, N] (groups = K/128) -> Marlin's order, same shape, contiguous."""
    groups, n = scales_gn.shape
    perm = GROUPED_PERM if groups > 1 else SINGLE_PERM
    return scales_gn.reshape(-1, len(perm))[:, perm].reshape(groups, n).contiguous()


def permute_bias(bias: torch.Tensor) -> torch.Tensor:
    """Bias [N] -> the order Marlin's epilogue reads it in."""
    return bias.reshape(-1, len(SINGLE_PERM))[:, SINGLE_PERM].reshape(-1).contiguous()
