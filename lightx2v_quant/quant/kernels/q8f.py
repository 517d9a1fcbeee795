"""Kernel `q8f`: Q8-Kernels' ``fp8_linear`` / ``q8_linear`` (CUTLASS/CuTe, built for Ada sm_89 only).

Per call: per-token activation quantization (vLLM's quantizer, our Triton one, or PyTorch ops; the
inputs are pre-quantized so Q8-Kernels applies no Hadamard transform), then
``fp8_linear(a, b, bias, scale_a, scale_b, use_hadamard=False, out_dtype=bf16)`` or
``q8_linear(a, b, bias, scale_a, scale_b, fuse_gelu=False, out_dtype=bf16)`` with a = x_q [M, K],
b = the weight as stored, [N, K] contiguous (NOT transposed), scale_a [M] and scale_b [N] fp32, and the
bias in fp32 (the library asserts it). ``out_dtype`` is always given: its default is float8_e4m3fn,
and its kernels write bf16 or fp8 only, so fp16 runs get bf16 cast to fp16.
Tiles are 128x128x64: K % 64 is required; N % 128 is required here too (the N tail is not visibly
handled in its source). Q8-Kernels is not on PyPI (build from github.com/KONAKONA666/q8_kernels).
Not run on our H100 machine: its kernels are compiled for sm_89 only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from lightx2v_quant.quant.kernels._adapter import Adapter, divisibility_problem, drop_cached

if TYPE_CHECKING:
    from lightx2v_quant.quant.linear import QuantLinear

_FP8, _INT8 = "w8a8-fp8-channel", "w8a8-int8-channel"


class Q8fKernel(Adapter):
    name = "q8f"
    formats = (_FP8, _INT8)
    devices = ("cuda",)
    only_sm = (89,)
    library = "q8_kernels.functional.linear"
    install_hint = (
        "build Q8-Kernels from source: git clone --recursive https://github.com/KONAKONA666/q8_kernels "
        "&& cd q8_kernels && python setup.py install (CUDA >= 12.4, an sm_89 GPU)"
    )
    act_quant_order = {_FP8: ("vllm", "triton", "torch"), _INT8: ("vllm", "triton", "torch")}

    def library_problem(self) -> str | None:
        problem = super().library_problem()
        if problem:
            return problem
        from q8_kernels.functional import linear

        missing = [f for f in ("fp8_linear", "q8_linear") if not callable(getattr(linear, f, None))]
        if missing:
            return (
                f"kernel 'q8f': q8_kernels.functional.linear lacks {', '.join(missing)} "
                f"(needs a build from 2024-12 or later)"
            )
        return None

    def shape_problem(self, fmt, out_features: int, in_features: int) -> str | None:
        return fmt.shape_problem(out_features, in_features) or divisibility_problem(
            self.name, "Q8-Kernels 128x128x64 tiles", out_features, in_features, 128, 64
        )

    def prepare(self, layer: QuantLinear) -> None:
        drop_cached(layer, "k_bias")
        if not layer.weight.is_contiguous():
            layer.weight = layer.weight.contiguous()
        layer.register_buffer(
            "k_scale_w", layer.weight_scale.float().reshape(-1).contiguous(), persistent=False
        )
        if layer.bias is not None:
            layer.register_buffer("k_bias32", layer.bias.float().contiguous(), persistent=False)

    def gemm(
        self, layer: QuantLinear, xq: torch.Tensor, xs: torch.Tensor, *, out_dtype: torch.dtype
    ) -> torch.Tensor:
        from q8_kernels.functional.linear import fp8_linear, q8_linear

        bias = layer.k_bias32 if layer.bias is not None else None
        scale_a = xs.float().reshape(-1).contiguous()
        if layer.format.name == _FP8:
            y = fp8_linear(
                xq, layer.weight, bias, scale_a, layer.k_scale_w, use_hadamard=False, out_dtype=torch.bfloat16
            )
        else:
            y = q8_linear(
                xq, layer.weight, bias, scale_a, layer.k_scale_w, fuse_gelu=False, out_dtype=torch.bfloat16
            )
        y = y.reshape(xq.shape[0], layer.out_features)  # the ops return [1, M, N]
        return y if out_dtype == torch.bfloat16 else y.to(out_dtype)


KERNEL = Q8fKernel()
