"""Kernel `vllm`: vLLM's CUTLASS ``cutlass_scaled_mm`` for fp8 and int8 per-channel W8A8.

Per call: vLLM's per-token quantizer (``dynamic_per_token_scaled_fp8_quant`` / ``dynamic_scaled_int8_quant``)
then ``cutlass_scaled_mm(out, a, b, scale_a, scale_b, bias)`` with a = x_q [M, K] row-major,
b = ``weight.t()`` (the [N, K] weight seen as [K, N] column-major: a view, never a copy), scale_a
[M, 1] fp32, scale_b [N, 1] fp32 and the bias in the output dtype, fused in the epilogue.
The ops come from an installed ``vllm`` or from the ops library named by ``LIGHTX2V_QUANT_VLLM_OPS``
(see ``_vllm_ops``). CUDA only: fp8 on sm_89+ (the library also checks its CUDA version), int8 on sm_75+.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from lightx2v_quant.quant.kernels import _vllm_ops
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
    from lightx2v_quant.hardware import HardwareSpec
    from lightx2v_quant.quant.linear import QuantLinear

_FP8, _INT8 = "w8a8-fp8-channel", "w8a8-int8-channel"
OPS = ("cutlass_scaled_mm", "dynamic_per_token_scaled_fp8_quant", "dynamic_scaled_int8_quant")


class VllmKernel(Adapter):
    name = "vllm"
    formats = (_FP8, _INT8)
    devices = ("cuda",)
    min_sm_by_format = {_FP8: 89, _INT8: 75}
    act_quant_order = {_FP8: ("vllm",), _INT8: ("vllm",)}

    def library_problem(self) -> str | None:
        why = _vllm_ops.problem(*OPS)
        return f"kernel 'vllm': {why}" if why else None

    def availability(self, fmt: str, hw: HardwareSpec) -> tuple[bool, str]:
        ok, why = super().availability(fmt, hw)
        if ok and fmt == _FP8 and hw.is_cuda and not _vllm_ops.missing_ops("cutlass_scaled_mm_supports_fp8"):
            # The library knows whether it was built with fp8 kernels for this GPU (CUDA >= 12.4 on sm_89).
            if not torch.ops._C.cutlass_scaled_mm_supports_fp8(hw.sm):
                return False, f"kernel 'vllm': this vLLM build has no fp8 CUTLASS kernels for sm_{hw.sm}"
        return ok, why

    def shape_problem(self, fmt, out_features: int, in_features: int) -> str | None:
        # cutlass_scaled_mm needs both dims of b % 16 (vLLM's Python wrapper would switch to a Triton
        # kernel otherwise; we call the op directly, so we refuse instead).
        return fmt.shape_problem(out_features, in_features) or divisibility_problem(
            self.name, "cutlass_scaled_mm", out_features, in_features, 16, 16
        )

    def notes(self, fmt: str) -> str:
        return f"ops from {_vllm_ops.source()}; " + super().notes(fmt)

    def prepare(self, layer: QuantLinear) -> None:
        drop_cached(layer, "k_bias")
        column_major_weight(layer)
        per_channel_scale(layer)

    def gemm(
        self, layer: QuantLinear, xq: torch.Tensor, xs: torch.Tensor, *, out_dtype: torch.dtype
    ) -> torch.Tensor:
        dtype = mm_dtype(out_dtype)
        out = torch.empty((xq.shape[0], layer.out_features), dtype=dtype, device=xq.device)
        torch.ops._C.cutlass_scaled_mm(out, xq, layer.weight.t(), xs, layer.k_scale_w, bias_as(layer, dtype))
        return out if dtype == out_dtype else out.to(out_dtype)


KERNEL = VllmKernel()
