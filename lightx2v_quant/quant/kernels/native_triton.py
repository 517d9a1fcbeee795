"""Kernel `triton`: our own Triton kernels for all four formats, no library beyond Triton.

- fp8 / int8 per-channel: fused per-token activation quantization (one pass over each row), then a W8A8
  GEMM with the scale and bias epilogue (tile config autotuned per shape; TMA + persistent on Hopper).
- int4-g128: W4A16 GEMM unpacking and scaling the packed weights in registers.
- fp8-block128: per-token-group-128 quantization, then a GEMM that scales each 128-wide K-block.

Weights are used in their on-disk layout ([N, K], K-major), so ``prepare`` copies nothing. After the
first call with a given activation shape, a layer's launches are replayed without the JIT's per-call
work (``triton_linear``), which keeps CLIP- and T5-sized GEMMs from being CPU-bound. Runs on CUDA;
with ``TRITON_INTERPRET=1`` Triton's interpreter runs the same kernels on CPU tensors (for tests; slow).
See docs/triton.md.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from lightx2v_quant.quant.kernels.base import Kernel, KernelUnavailable

if TYPE_CHECKING:
    from lightx2v_quant.quant.linear import QuantLinear

_FP8, _INT8, _INT4, _B128 = "w8a8-fp8-channel", "w8a8-int8-channel", "w4a16-int4-g128", "w8a8-fp8-block128"


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_OPS: list = []


def _ops():
    """``triton_linear``, imported on first use: this module must import even where Triton does not."""
    if not _OPS:
        from lightx2v_quant.quant.kernels import triton_linear

        _OPS.append(triton_linear)
    return _OPS[0]


def _custom_ops():
    """``triton_custom_ops`` (torch.library ops over the same kernels), imported on first use."""
    from lightx2v_quant.quant.kernels import triton_custom_ops

    return triton_custom_ops


class TritonKernel(Kernel):
    name = "triton"
    formats = (_FP8, _INT8, _INT4, _B128)
    # fp8 tensor-core dots need Ada/Hopper (sm_89+); int8 and the 16-bit dots of int4 run on Ampere.
    min_sm_by_format = {_FP8: 89, _INT8: 80, _INT4: 80, _B128: 89}
    library = "triton"
    install_hint = "pip install triton (CUDA builds of PyTorch usually ship it)"

    @property  # type: ignore[override]
    def devices(self) -> tuple[str, ...]:
        """CUDA; plus CPU while TRITON_INTERPRET=1 (Triton's interpreter, for tests)."""
        return ("cuda", "cpu") if interpreter_enabled() else ("cuda",)

    def shape_problem(self, fmt, out_features: int, in_features: int) -> str | None:
        # The kernels mask every edge, so only the format's own rules apply (K % 128 for the grouped formats).
        return fmt.shape_problem(out_features, in_features)

    # -- prepare --------------------------------------------------------------------------------
    def prepare(self, layer: QuantLinear) -> None:
        """Nothing is re-laid out: W [N, K] is already the K-major operand the kernels read. Only checks."""
        fmt = layer.format.name
        if fmt not in self.formats:
            raise KernelUnavailable(f"kernel 'triton' has no path for {fmt}")
        if layer.weight.stride(-1) != 1:
            raise KernelUnavailable(
                "kernel 'triton' needs the weight row-major as stored ([N, K] with unit stride along K); "
                f"got strides {tuple(layer.weight.stride())}. Load the checkpoint tensor as is "
                "(no transposed view)."
            )
        if layer.bias is not None and not layer.bias.is_contiguous():
            layer.bias = layer.bias.contiguous()  # read as a plain [N] vector
        # Replayable launches per activation shape (triton_linear.Plan); tensors may have changed.
        layer.k_triton_plans = {}
        if fmt in (_FP8, _INT8):
            # [N, 1] fp32 -> contiguous [N] (a view, no copy, for the usual contiguous scale)
            scale = layer.weight_scale.float().reshape(layer.out_features).contiguous()
            layer.register_buffer("k_w_scale", scale, persistent=False)
        elif not layer.weight_scale.is_contiguous():
            layer.weight_scale = layer.weight_scale.contiguous()

    # -- apply ----------------------------------------------------------------------------------
    def apply(self, layer: QuantLinear, x: torch.Tensor) -> torch.Tensor:
        fmt = layer.format.name
        if torch.compiler.is_compiling():  # an opaque custom op: no graph break inside a compiled block
            scale = layer.k_w_scale if fmt in (_FP8, _INT8) else layer.weight_scale
            return _custom_ops().linear(x, fmt, layer.weight, scale, layer.bias)
        lin = _ops()
        plans = getattr(layer, "k_triton_plans", None) if x.is_cuda else None
        if fmt in (_FP8, _INT8):
            return lin.linear_w8a8(x, fmt, layer.weight, layer.k_w_scale, layer.bias, plans)
        if fmt == _INT4:
            return lin.linear_w4a16(x, layer.weight, layer.weight_scale, layer.bias, plans)
        if fmt == _B128:
            return lin.linear_fp8_block(x, layer.weight, layer.weight_scale, layer.bias, plans)
        raise KernelUnavailable(f"kernel 'triton' has no path for {fmt}")

    # -- pre-quantized activations (the DIT's fused norm + quantization) -----------------------------
    def prequantized_input(self, layer: QuantLinear) -> str | None:
        return {_FP8: "fp8", _INT8: "int8"}.get(layer.format.name)

    def apply_quantized(
        self, layer: QuantLinear, xq: torch.Tensor, x_scale: torch.Tensor, out_dtype: torch.dtype
    ) -> torch.Tensor:
        want = {_FP8: torch.float8_e4m3fn, _INT8: torch.int8}.get(layer.format.name)
        if xq.dtype != want:
            raise KernelUnavailable(
                f"kernel 'triton' takes no pre-quantized {xq.dtype} activations for {layer.format.name}"
            )
        return _custom_ops().w8a8_prequantized(xq, x_scale, layer.weight, layer.k_w_scale, layer.bias, out_dtype)

    # -- the residual add in the GEMM's epilogue (the DIT's output projections) ---------------------------
    def adds_into(self, layer: QuantLinear, residual: torch.Tensor, gate: torch.Tensor | None) -> bool:
        """fp8 / int8 per-channel on CUDA, a residual [M, N] in a 16-bit float with unit column stride, and
        an fp32 [N] gate or none (``triton_ops.w8a8_matmul_add_`` then uses the epilogue where it can)."""
        return (
            layer.format.name in (_FP8, _INT8)
            and residual.is_cuda
            and residual.dtype in (torch.bfloat16, torch.float16)
            and residual.dim() == 2
            and residual.shape[1] == layer.out_features
            and residual.stride(1) == 1
            and (gate is None or (gate.dtype == torch.float32 and gate.numel() == layer.out_features))
        )

    def apply_add_(self, layer: QuantLinear, x, residual: torch.Tensor, gate: torch.Tensor | None) -> None:
        from lightx2v_quant.quant.activation import QuantizedActivation

        if isinstance(x, QuantizedActivation):
            xq, x_scale = x.data.reshape(-1, layer.in_features), x.scale.reshape(-1, 1)
        else:
            xq, x_scale = _custom_ops().quantize_per_token(x, layer.format.name)
        _custom_ops().w8a8_add_(xq, x_scale, layer.weight, layer.k_w_scale, layer.bias, residual, gate)


KERNEL = TritonKernel()
