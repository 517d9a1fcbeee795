"""Our Triton GEMMs as PyTorch custom ops, for ``torch.compile``.

Eager calls go straight to ``triton_linear`` (with the per-layer launch replays); under ``torch.compile``
the kernel calls these ops instead, which dynamo treats as opaque (their autotuning, alignment checks
and launch caches hold Python state a graph cannot), so a compiled DIT block has no graph break.
"""

from __future__ import annotations

import torch

from lightx2v_quant.quant.kernels import triton_linear, triton_ops


@torch.library.custom_op("lightx2v_quant::triton_linear", mutates_args=())
def linear(x: torch.Tensor, fmt: str, weight: torch.Tensor, scale: torch.Tensor,
           bias: torch.Tensor | None) -> torch.Tensor:
    """x [M, K] (run dtype) -> [M, N] in x.dtype: the `triton` kernel's whole path for ``fmt``."""
    if fmt in ("w8a8-fp8-channel", "w8a8-int8-channel"):
        return triton_linear.linear_w8a8(x, fmt, weight, scale, bias, None)
    if fmt == "w4a16-int4-g128":
        return triton_linear.linear_w4a16(x, weight, scale, bias, None)
    return triton_linear.linear_fp8_block(x, weight, scale, bias, None)


@linear.register_fake
def _linear_fake(x, fmt, weight, scale, bias):
    return x.new_empty((x.shape[0], weight.shape[0]))


@torch.library.custom_op("lightx2v_quant::triton_w8a8_prequantized", mutates_args=())
def w8a8_prequantized(xq: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, w_scale: torch.Tensor,
                      bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """Already quantized activations (fp8 / int8 [M, K] + fp32 scales) -> [M, N] in ``out_dtype``."""
    return triton_ops.w8a8_matmul(xq, x_scale, weight, w_scale, bias, out_dtype)


@w8a8_prequantized.register_fake
def _w8a8_prequantized_fake(xq, x_scale, weight, w_scale, bias, out_dtype):
    return xq.new_empty((xq.shape[0], weight.shape[0]), dtype=out_dtype)


@torch.library.custom_op("lightx2v_quant::triton_quantize_per_token", mutates_args=())
def quantize_per_token(x: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] (run dtype) -> the format's per-token activation: fp8 / int8 [M, K] and fp32 [M, 1] scales."""
    return triton_ops.quantize_per_token(x, fmt)


@quantize_per_token.register_fake
def _quantize_per_token_fake(x, fmt):
    dtype = torch.int8 if fmt == "w8a8-int8-channel" else torch.float8_e4m3fn
    return x.new_empty(x.shape, dtype=dtype), x.new_empty((x.shape[0], 1), dtype=torch.float32)


@torch.library.custom_op("lightx2v_quant::triton_w8a8_add_", mutates_args=("residual",))
def w8a8_add_(xq: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, w_scale: torch.Tensor,
              bias: torch.Tensor | None, residual: torch.Tensor, gate: torch.Tensor | None) -> None:
    """residual [M, N] += ((xq * x_scale) @ (weight * w_scale)^T + bias) * gate, in the GEMM's epilogue
    where it can (``triton_ops.w8a8_matmul_add_``)."""
    triton_ops.w8a8_matmul_add_(xq, x_scale, weight, w_scale, bias, residual, gate)


@w8a8_add_.register_fake
def _w8a8_add_fake(xq, x_scale, weight, w_scale, bias, residual, gate):
    return None
