"""Kernel `torch`: PyTorch's own low-precision ops, on CPU and CUDA, no extra library.

- fp8 per-channel: per-token fp8 quantization, then ``torch._scaled_mm`` with row-wise scales and the
  bias fused (sm_89+ on CUDA; emulated or oneDNN on CPU).
- int8 per-channel: per-token int8 quantization, ``torch._int_mm`` (int32 accumulate), scales and bias
  applied after (CUDA needs M > 16: small inputs are padded).
- int4-g128: PyTorch's int4 weight-only "tinygemm" ops (``_weight_int4pack_mm`` on CUDA sm_80+ with
  bf16 activations, ``_weight_int4pack_mm_for_cpu`` on CPU).
- fp8-block128: activations quantized per token-group of 128 and dequantized with the weight, then a
  high-precision matmul. Correct everywhere, not fast; the `deepgemm` and `triton` kernels are fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from lightx2v_quant.quant import formats as qf
from lightx2v_quant.quant.kernels.base import Kernel, KernelUnavailable, pad_rows

if TYPE_CHECKING:
    from lightx2v_quant.quant.linear import QuantLinear

_FP8, _INT8, _INT4, _B128 = "w8a8-fp8-channel", "w8a8-int8-channel", "w4a16-int4-g128", "w8a8-fp8-block128"


def _quantize_per_token(x: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token activation quantization: the fused Triton kernel on CUDA when present, else torch ops."""
    if x.is_cuda:
        fused = _fused_quant()
        if fused is not None:
            return fused(x, fmt)
    return qf.FORMATS[fmt].quantize_activation(x)


_FUSED: list = []


def _fused_quant():
    """The Triton per-token quantizer (one pass over each row), or None when Triton is missing."""
    if not _FUSED:
        try:
            from lightx2v_quant.quant.kernels.triton_ops import quantize_per_token
        except Exception:  # no triton, or the module is not built for this machine
            quantize_per_token = None
        _FUSED.append(quantize_per_token)
    return _FUSED[0]


class TorchKernel(Kernel):
    name = "torch"
    formats = (_FP8, _INT8, _INT4, _B128)
    devices = ("cpu", "cuda")
    min_sm_by_format = {_FP8: 89, _INT8: 75, _INT4: 80, _B128: 89}
    library = None

    def shape_problem(self, fmt, out_features: int, in_features: int) -> str | None:
        problem = fmt.shape_problem(out_features, in_features)
        if problem:
            return problem
        if fmt.name == _FP8 and (in_features % 16 or out_features % 16):
            return f"torch._scaled_mm needs K % 16 == 0 and N % 16 == 0, got N={out_features} K={in_features}"
        if fmt.name == _INT8 and (in_features % 8 or out_features % 8):
            return f"torch._int_mm needs K % 8 == 0 and N % 8 == 0, got N={out_features} K={in_features}"
        return None

    # -- prepare --------------------------------------------------------------------------------
    def prepare(self, layer: QuantLinear) -> None:
        fmt = layer.format.name
        n = layer.out_features
        if fmt in (_FP8, _INT8):
            layer.register_buffer("k_scale_w", layer.weight_scale.float().reshape(1, n).contiguous(), persistent=False)
        elif fmt == _INT4:
            self._prepare_int4(layer)

    def _prepare_int4(self, layer: QuantLinear) -> None:
        n, k = layer.out_features, layer.in_features
        q = qf.unpack_int4(layer.weight).to(torch.int32) + 8  # [N, K] in 0..15
        scale = layer.weight_scale.float().t().contiguous()  # [K/128, N]
        if layer.weight.is_cuda:
            # tinygemm wants uint8 [N, K/2] with the even element in the HIGH nibble, bf16 scales+zeros
            packed = (q[:, 0::2] << 4 | q[:, 1::2]).to(torch.uint8)
            w = torch._convert_weight_to_int4pack(packed, 8)
            sz_dtype = torch.bfloat16
        else:
            w = torch._convert_weight_to_int4pack_for_cpu(q, 2)
            sz_dtype = torch.float32
        scale_zeros = torch.stack([scale, torch.zeros_like(scale)], dim=-1).to(sz_dtype)  # [K/128, N, 2]
        layer.register_buffer("k_int4_packed", w, persistent=False)
        layer.register_buffer("k_int4_scale_zeros", scale_zeros, persistent=False)
        del n, k

    # -- apply ----------------------------------------------------------------------------------
    def apply(self, layer: QuantLinear, x: torch.Tensor) -> torch.Tensor:
        fmt = layer.format.name
        if fmt == _FP8:
            return self._fp8(layer, x)
        if fmt == _INT8:
            return self._int8(layer, x)
        if fmt == _INT4:
            return self._int4(layer, x)
        if fmt == _B128:
            return self._block128(layer, x)
        raise KernelUnavailable(f"kernel 'torch' has no path for {fmt}")

    def _bias(self, layer: QuantLinear, dtype: torch.dtype) -> torch.Tensor | None:
        return None if layer.bias is None else layer.bias.to(dtype)

    def _fp8(self, layer: QuantLinear, x: torch.Tensor) -> torch.Tensor:
        xq, xs = _quantize_per_token(x, _FP8)
        return self._fp8_mm(layer, xq, xs, x.dtype)

    def _fp8_mm(self, layer: QuantLinear, xq: torch.Tensor, xs: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        mm_dtype = out_dtype
        if xq.is_cuda and out_dtype == torch.float32:
            mm_dtype = torch.bfloat16  # row-wise scaled_mm on CUDA writes bf16/fp16 only
        y = torch._scaled_mm(
            xq,
            layer.weight.t(),  # [K, N] column-major view of the [N, K] weight
            scale_a=xs,
            scale_b=layer.k_scale_w,
            bias=self._bias(layer, mm_dtype),
            out_dtype=mm_dtype,
            use_fast_accum=layer.fast_accum and xq.is_cuda,
        )
        return y.to(out_dtype)

    def _int8(self, layer: QuantLinear, x: torch.Tensor) -> torch.Tensor:
        xq, xs = _quantize_per_token(x, _INT8)
        return self._int8_mm(layer, xq, xs, x.dtype)

    def _int8_mm(self, layer: QuantLinear, xq: torch.Tensor, xs: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        xq, m = pad_rows(xq, 17) if xq.is_cuda else (xq, xq.shape[0])
        acc = torch._int_mm(xq, layer.weight.t())[:m]  # int32 [M, N]
        # Epilogue in eager ops, fp32, in place: int32 * fp32 promotes to fp32 without a separate cast.
        y = acc * xs  # [M, N] * [M, 1]
        y.mul_(layer.k_scale_w)  # * [1, N]
        if layer.bias is not None:
            y.add_(layer.bias)
        return y.to(out_dtype)

    # -- pre-quantized activations (fused producers) --------------------------------------------
    def prequantized_input(self, layer: QuantLinear) -> str | None:
        return {_FP8: "fp8", _INT8: "int8"}.get(layer.format.name)

    def apply_quantized(self, layer: QuantLinear, xq: torch.Tensor, x_scale: torch.Tensor,
                        out_dtype: torch.dtype) -> torch.Tensor:
        fmt = layer.format.name
        if fmt == _FP8 and xq.dtype == qf.FP8_DTYPE:
            return self._fp8_mm(layer, xq, x_scale, out_dtype)
        if fmt == _INT8 and xq.dtype == torch.int8:
            return self._int8_mm(layer, xq, x_scale, out_dtype)
        raise KernelUnavailable(f"kernel 'torch' takes no pre-quantized {xq.dtype} activations for {fmt}")

    def _int4(self, layer: QuantLinear, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:
            y = torch._weight_int4pack_mm(x.to(torch.bfloat16), layer.k_int4_packed, qf.GROUP, layer.k_int4_scale_zeros)
        else:
            xf = x if x.dtype in (torch.float32, torch.bfloat16, torch.float16) else x.float()
            sz = layer.k_int4_scale_zeros.to(xf.dtype)
            y = torch._weight_int4pack_mm_for_cpu(xf, layer.k_int4_packed, qf.GROUP, sz)
        if layer.bias is not None:
            y = y + layer.bias.to(y.dtype)
        return y.to(x.dtype)

    def _block128(self, layer: QuantLinear, x: torch.Tensor) -> torch.Tensor:
        fmt = layer.format
        xq, xs = fmt.quantize_activation(x)
        compute = torch.float32 if not x.is_cuda else torch.bfloat16
        xd = fmt.dequantize_activation(xq, xs).to(compute)
        wd = fmt.dequantize_weight({"weight": layer.weight, "weight_scale": layer.weight_scale}).to(compute)
        y = F.linear(xd, wd, self._bias(layer, compute))
        return y.to(x.dtype)


KERNEL = TorchKernel()
