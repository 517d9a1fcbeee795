"""Kernel `sgl`: sgl-kernel's CUTLASS ``fp8_scaled_mm`` / ``int8_scaled_mm`` for per-channel W8A8.

Per call: per-token activation quantization, then ``fp8_scaled_mm(mat_a, mat_b, scales_a, scales_b,
out_dtype, bias)`` (or ``int8_scaled_mm``, same arguments) with mat_a = x_q [M, K] row-major,
mat_b = ``weight.t()`` ([K, N] column-major view of the [N, K] weight, never ``.contiguous()``),
scales_a [M, 1] and scales_b [N, 1] contiguous fp32 (numel M and N), bias in out_dtype.
Activation quantizers: fp8 uses sgl-kernel's own ``sgl_per_token_quant_fp8``; sgl-kernel has no int8
one, so int8 takes the first present of sglang's ``per_token_quant_int8``, vLLM's
``dynamic_scaled_int8_quant``, our Triton quantizer, or PyTorch ops (as LightX2V does; ``notes`` says which).
Written to sgl-kernel 0.3.21's documented API. Not run on our H100 machine: that wheel needs CUDA 12
runtime libraries and the torch 2.9 C++ ABI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from lightx2v_quant.quant.kernels._adapter import (
    Adapter,
    bias_as,
    column_major_weight,
    divisibility_problem,
    drop_cached,
    mm_dtype,
    per_channel_scale,
)

if TYPE_CHECKING:
    from lightx2v_quant.quant.linear import QuantLinear

_FP8, _INT8 = "w8a8-fp8-channel", "w8a8-int8-channel"
FUNCTIONS = ("fp8_scaled_mm", "int8_scaled_mm", "sgl_per_token_quant_fp8")


class SglKernel(Adapter):
    name = "sgl"
    formats = (_FP8, _INT8)
    devices = ("cuda",)
    min_sm_by_format = {_FP8: 89, _INT8: 75}
    library = "sgl_kernel"
    install_hint = "pip install sgl-kernel (0.3.21 pairs with torch 2.9 and CUDA 12)"
    act_quant_order = {_FP8: ("sgl_kernel",), _INT8: ("sglang", "vllm", "triton", "torch")}

    def library_problem(self) -> str | None:
        problem = super().library_problem()
        if problem:
            return problem
        import sgl_kernel

        missing = [f for f in FUNCTIONS if not callable(getattr(sgl_kernel, f, None))]
        if missing:
            version = getattr(sgl_kernel, "__version__", "?")
            return (
                f"kernel 'sgl': sgl_kernel {version} lacks {', '.join(missing)} "
                f"(written for sgl-kernel 0.3.21; newer SGLang moved these GEMMs to JIT kernels)"
            )
        return None

    def shape_problem(self, fmt, out_features: int, in_features: int) -> str | None:
        problem = fmt.shape_problem(out_features, in_features)
        if problem:
            return problem
        if fmt.name == _INT8:  # int8_scaled_mm: K % 16 (16-byte rows), N % 8 (output row alignment)
            return divisibility_problem(self.name, "int8_scaled_mm", out_features, in_features, 8, 16)
        return divisibility_problem(self.name, "fp8_scaled_mm", out_features, in_features, 16, 16)

    def prepare(self, layer: QuantLinear) -> None:
        drop_cached(layer, "k_bias")
        column_major_weight(layer)
        per_channel_scale(layer)

    def gemm(
        self, layer: QuantLinear, xq: torch.Tensor, xs: torch.Tensor, *, out_dtype: torch.dtype
    ) -> torch.Tensor:
        import sgl_kernel

        dtype = mm_dtype(out_dtype)
        fn = sgl_kernel.fp8_scaled_mm if layer.format.name == _FP8 else sgl_kernel.int8_scaled_mm
        y = fn(xq, layer.weight.t(), xs.contiguous(), layer.k_scale_w, dtype, bias_as(layer, dtype))
        return y if dtype == out_dtype else y.to(out_dtype)


KERNEL = SglKernel()
