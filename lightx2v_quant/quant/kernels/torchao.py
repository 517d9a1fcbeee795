"""Kernel `torchao`: torchao's low-level int8 and float8 inference functions (eager, no tensor subclass).

- int8 (``int8-torchao``, CPU and CUDA): ``_quantize_activation_per_token_absmax`` (symmetric, [-127, 127],
  scale floored at 1e-5) then ``_quant_int8_per_token_matmul(x_q, x_s, w_t [K, N], w_s [1, N])``, i.e.
  ``int_scaled_matmul`` -> ``torch._int_mm`` with the scales applied after; the bias is added last.
  Older torchao releases export the same functions without the underscore; both names are accepted.
  ``torch._int_mm`` on CUDA needs M > 16, so smaller inputs are padded to 17 rows. torchao copies a
  non-contiguous ``w_t`` on every call, so ``prepare`` stores the weight K-major: the tensor keeps its
  [N, K] shape and values (same state dict), its storage is ``w_t`` contiguous. Such a weight cannot be
  written with safetensors without ``.contiguous()``.
- fp8 (``fp8-torchao``, CUDA sm_89+): LightX2V's fp8-torchao is plain ``torch._scaled_mm`` with row-wise
  scales and fast accumulation. We call the same thing through torchao's own float8 inference helpers,
  so the scheme means "torchao's fp8 path": ``_choose_scale_float8`` + ``_quantize_affine_float8``
  (per-token, amax floored at 1e-8) and ``addmm_float8_unwrapped_inference(..., use_fast_accum=True)``,
  the ``torch._scaled_mm`` call of torchao's Float8 PerRow inference. Fast accumulation is always on, as
  in torchao's default ``Float8MMConfig`` and in LightX2V.
Both are eager: torchao gets its speed from ``torch.compile`` (the GEMM benchmark runs that peer too).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable

import torch

from lightx2v_quant.quant import formats as qf
from lightx2v_quant.quant.kernels._adapter import (
    Adapter,
    bias_as,
    column_major_weight,
    divisibility_problem,
    drop_cached,
    mm_dtype,
)
from lightx2v_quant.quant.kernels.base import KernelUnavailable, pad_rows

if TYPE_CHECKING:
    from lightx2v_quant.hardware import HardwareSpec
    from lightx2v_quant.quant.linear import QuantLinear

_FP8, _INT8 = "w8a8-fp8-channel", "w8a8-int8-channel"

# role -> (module, accepted names in order); torchao 0.18 names first
_FUNCTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "act_int8": (
        "torchao.quantization.utils",
        ("_quantize_activation_per_token_absmax", "quantize_activation_per_token_absmax"),
    ),
    "mm_int8": (
        "torchao.quantization.utils",
        ("_quant_int8_per_token_matmul", "quant_int8_per_token_matmul"),
    ),
    "scale_fp8": ("torchao.quantization.quant_primitives", ("_choose_scale_float8",)),
    "quant_fp8": ("torchao.quantization.quant_primitives", ("_quantize_affine_float8",)),
    "mm_fp8": ("torchao.float8.inference", ("addmm_float8_unwrapped_inference",)),
}
_RESOLVED: dict[str, Callable] = {}


def _resolve() -> list[str]:
    """Find torchao's functions once; return what could not be found."""
    missing = []
    for role, (module_name, names) in _FUNCTIONS.items():
        if role in _RESOLVED:
            continue
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            missing.append(f"{module_name} ({type(exc).__name__}: {exc})")
            continue
        fn = next((getattr(module, n) for n in names if callable(getattr(module, n, None))), None)
        if fn is None:
            missing.append(f"{module_name}.{names[0]}")
        else:
            _RESOLVED[role] = fn
    return missing


class TorchaoKernel(Adapter):
    name = "torchao"
    formats = (_FP8, _INT8)
    devices = ("cpu", "cuda")
    min_sm_by_format = {_FP8: 89, _INT8: 75}
    library = "torchao"
    install_hint = (
        "pip install torchao==0.18.0 (no dependencies; its CUDA extensions load only with torch >= 2.11)"
    )

    def hardware_problem(self, fmt: str, hw: HardwareSpec) -> str | None:
        if fmt == _FP8 and not hw.is_cuda:
            where = hw.label()
            return f"kernel 'torchao' runs fp8 on CUDA sm_89+ only (row-wise torch._scaled_mm), not {where}"
        return super().hardware_problem(fmt, hw)

    def library_problem(self) -> str | None:
        problem = super().library_problem()
        if problem:
            return problem
        missing = _resolve()
        if missing:
            version = getattr(importlib.import_module("torchao"), "__version__", "?")
            return (
                f"kernel 'torchao': torchao {version} lacks {', '.join(missing)} (written for torchao 0.18)"
            )
        return None

    def shape_problem(self, fmt, out_features: int, in_features: int) -> str | None:
        problem = fmt.shape_problem(out_features, in_features)
        if problem:
            return problem
        if fmt.name == _INT8:  # else torchao's safe_int_mm silently computes on the CPU in int32
            return divisibility_problem(self.name, "torch._int_mm", out_features, in_features, 8, 8)
        return divisibility_problem(self.name, "torch._scaled_mm", out_features, in_features, 16, 16)

    def notes(self, fmt: str) -> str:
        if fmt == _INT8:
            return (
                "torchao _quantize_activation_per_token_absmax + _quant_int8_per_token_matmul "
                "(torch._int_mm, scales applied after; eager)"
            )
        return (
            "torchao _choose_scale_float8/_quantize_affine_float8 + addmm_float8_unwrapped_inference "
            "(torch._scaled_mm row-wise, fast accumulation; eager)"
        )

    # -- prepare ------------------------------------------------------------------------------
    def prepare(self, layer: QuantLinear) -> None:
        drop_cached(layer, "k_bias")
        problem = self.library_problem()
        if problem:
            raise KernelUnavailable(problem)
        n = layer.out_features
        layer.register_buffer(
            "k_scale_w", layer.weight_scale.float().reshape(1, n).contiguous(), persistent=False
        )
        if layer.format.name == _INT8:
            if not layer.weight.t().is_contiguous():
                layer.weight = layer.weight.t().contiguous().t()  # [N, K] values, K-major storage
        else:
            column_major_weight(layer)

    # -- apply ----------------------------------------------------------------------------------
    def quantize_input(self, layer: QuantLinear, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.contiguous()
        if layer.format.name == _INT8:
            q, s = _RESOLVED["act_int8"](x)  # s: [M] (or [M, 1]); bf16 for bf16 inputs
            return q, s.float().reshape(-1, 1)
        s = _RESOLVED["scale_fp8"](x, [1, x.shape[1]], qf.FP8_DTYPE, hp_value_lb=qf.AMAX_EPS)  # [M, 1] fp32
        return _RESOLVED["quant_fp8"](x, s, qf.FP8_DTYPE), s

    def gemm(
        self, layer: QuantLinear, xq: torch.Tensor, xs: torch.Tensor, *, out_dtype: torch.dtype
    ) -> torch.Tensor:
        if layer.format.name == _INT8:
            return self._int8(layer, xq, xs, out_dtype)
        dtype = mm_dtype(out_dtype)
        y = _RESOLVED["mm_fp8"](
            xq,
            xs,
            layer.weight.t(),
            layer.k_scale_w,
            output_dtype=dtype,
            bias=bias_as(layer, dtype),
            use_fast_accum=True,
        )
        return y if dtype == out_dtype else y.to(out_dtype)

    def _int8(
        self, layer: QuantLinear, xq: torch.Tensor, xs: torch.Tensor, out_dtype: torch.dtype
    ) -> torch.Tensor:
        m = xq.shape[0]
        if xq.is_cuda and m <= 16:
            xq, _ = pad_rows(xq, 17)
            xs = torch.cat([xs, xs.new_ones(17 - m, 1)])
        y = _RESOLVED["mm_int8"](xq, xs, layer.weight.t(), layer.k_scale_w, out_dtype)[:m]  # output_dtype
        if layer.bias is not None:
            y = y + layer.bias.to(out_dtype)
        return y


KERNEL = TorchaoKernel()
