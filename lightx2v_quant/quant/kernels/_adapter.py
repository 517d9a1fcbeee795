"""Shared shape of the external-library adapters: quantize the input, then a GEMM that reads it.

``apply`` = ``gemm(layer, *quantize_input(layer, x), out_dtype=x.dtype)``; the benchmark times the two
halves apart ("GEMM alone"). Weight-only adapters quantize nothing: ``quantize_input`` passes x through.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch

from lightx2v_quant.quant.kernels import _act_quant
from lightx2v_quant.quant.kernels.base import Kernel

if TYPE_CHECKING:
    from lightx2v_quant.quant.linear import QuantLinear

HALF = (torch.bfloat16, torch.float16)


class Adapter(Kernel):
    """A kernel backed by an external library, with its input quantization split from its GEMM."""

    # Activation quantizer sources in order of preference (see _act_quant.SOURCES), per format.
    act_quant_order: dict[str, Sequence[str]] = {}

    def quantize_input(self, layer: QuantLinear, x: torch.Tensor) -> tuple[Any, ...]:
        return self.act_quantizer(layer.format.name)(x)

    def gemm(self, layer: QuantLinear, *qx: Any, out_dtype: torch.dtype) -> torch.Tensor:
        raise NotImplementedError

    def apply(self, layer: QuantLinear, x: torch.Tensor) -> torch.Tensor:
        return self.gemm(layer, *self.quantize_input(layer, x), out_dtype=x.dtype)

    def act_quantizer(self, fmt: str) -> _act_quant.Quantizer:
        return _act_quant.choose(fmt, self.act_quant_order[fmt])

    def notes(self, fmt: str) -> str:
        """What else the adapter uses here (for reports): which activation quantizer, which library path."""
        order = self.act_quant_order.get(fmt)
        if not order:
            return ""
        return f"activation quantization: {self.act_quantizer(fmt).name}"


def cached(
    layer: QuantLinear, name: str, make, *, like: torch.Tensor | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """A derived non-persistent buffer of ``layer``, made by ``make()`` once per dtype/device.

    Used for casts whose target dtype is only known at the first call (the run dtype), e.g. the bias
    in the GEMM's output dtype. ``prepare`` drops these buffers (see ``drop_cached``).
    """
    have = getattr(layer, name, None)
    device = like.device if like is not None else None
    if (
        have is not None
        and (dtype is None or have.dtype == dtype)
        and (device is None or have.device == device)
    ):
        return have
    value = make()
    layer.register_buffer(name, value, persistent=False)
    return value


def drop_cached(layer: QuantLinear, *names: str) -> None:
    for name in names:
        if name in layer._buffers:
            del layer._buffers[name]


def bias_as(layer: QuantLinear, dtype: torch.dtype) -> torch.Tensor | None:
    """The layer's bias in ``dtype`` (cast once and kept as the non-persistent buffer ``k_bias``)."""
    if layer.bias is None:
        return None
    if layer.bias.dtype == dtype:
        return layer.bias
    return cached(layer, "k_bias", lambda: layer.bias.to(dtype).contiguous(), like=layer.bias, dtype=dtype)


def mm_dtype(out_dtype: torch.dtype) -> torch.dtype:
    """The 16-bit dtype a GEMM writes when the run dtype is ``out_dtype`` (fp32 runs get bf16, cast after)."""
    return out_dtype if out_dtype in HALF else torch.bfloat16


def per_channel_scale(layer: QuantLinear) -> torch.Tensor:
    """The per-output-channel weight scale as contiguous fp32 [N, 1] (a non-persistent buffer)."""
    scale = layer.weight_scale.float().reshape(-1, 1).contiguous()
    layer.register_buffer("k_scale_w", scale, persistent=False)
    return scale


def column_major_weight(layer: QuantLinear) -> torch.Tensor:
    """``weight.t()`` as the [K, N] column-major view CUTLASS wants (stride(0) == 1).

    The [N, K] weight is contiguous after loading; if something handed over a strided one, it is made
    contiguous once here (same shape and values, so the state dict is unchanged) rather than per call.
    """
    if not layer.weight.is_contiguous():
        layer.weight = layer.weight.contiguous()
    return layer.weight.t()


def divisibility_problem(
    kernel: str, what: str, out_features: int, in_features: int, n_mult: int, k_mult: int
) -> str | None:
    """'<kernel> needs K % k_mult == 0 and N % n_mult == 0 ...' when the shape misses either, else None."""
    if in_features % k_mult or out_features % n_mult:
        return (
            f"kernel '{kernel}' ({what}) needs in_features % {k_mult} == 0 and out_features % {n_mult} == 0, "
            f"got out_features={out_features} in_features={in_features}"
        )
    return None
