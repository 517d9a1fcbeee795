"""Activations that arrive at a linear already quantized, from a fused producer (e.g. LayerNorm +
modulation + per-token quantization in one pass), so the GEMM skips its own quantization pass."""

from __future__ import annotations

from typing import NamedTuple

import torch

# Activation formats a producer can emit, and the weight formats that consume them.
PER_TOKEN_FORMATS = {"fp8": "w8a8-fp8-channel", "int8": "w8a8-int8-channel"}


class QuantizedActivation(NamedTuple):
    """``data`` [..., K] fp8 e4m3 / int8 with one fp32 scale per token in ``scale`` [..., 1] (the format's
    per-token numerics: scale = row amax / qmax); ``dtype`` is the dtype the unquantized activations would
    have had, i.e. the dtype the consuming linear returns."""

    data: torch.Tensor
    scale: torch.Tensor
    dtype: torch.dtype

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    def dequantize(self) -> torch.Tensor:
        """For tests and references: data * scale in ``dtype``."""
        return (self.data.float() * self.scale.float()).to(self.dtype)
