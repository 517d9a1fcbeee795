"""The scheme registry: the ONE list of quantization scheme names.

A scheme is a format plus a kernel; its name is ``<format short>-<kernel>`` (``fp8-sgl``,
``int4-g128-marlin``). The Hydra option files under ``conf/{dit,t5,clip}_quant/`` and the README are
checked against this list by the tests. Within one format, schemes are listed in order of preference:
``auto`` and ``quant.fallback=native`` take the first one that is available.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from lightx2v_quant.quant.formats import FORMATS, Format

NONE = "none"  # no quantization: the layers stay nn.Linear in the run dtype
AUTO = "auto"  # pick the best scheme that runs here (see choose_auto)
NATIVE_KERNELS = ("triton", "torch")  # ours: no external library; preferred in this order


@dataclass(frozen=True)
class Scheme:
    name: str
    format: str
    kernel: str
    lightx2v: bool  # LightX2V knows this name (checkpoints and configs move between the projects)
    summary: str

    @property
    def fmt(self) -> Format:
        return FORMATS[self.format]

    @property
    def native(self) -> bool:
        return self.kernel in NATIVE_KERNELS


_F8, _I8, _I4, _B = "w8a8-fp8-channel", "w8a8-int8-channel", "w4a16-int4-g128", "w8a8-fp8-block128"

SCHEMES: tuple[Scheme, ...] = (
    # fp8 e4m3 per-channel weights, per-token activations
    Scheme("fp8-triton", _F8, "triton", True, "our Triton W8A8 GEMM with fused per-token quantization"),
    Scheme("fp8-vllm", _F8, "vllm", True, "vLLM CUTLASS cutlass_scaled_mm"),
    Scheme("fp8-sgl", _F8, "sgl", True, "sgl-kernel fp8_scaled_mm"),
    Scheme("fp8-torchao", _F8, "torchao", True, "torch._scaled_mm row-wise as LightX2V's fp8-torchao calls it"),
    Scheme("fp8-q8f", _F8, "q8f", True, "Q8-Kernels fp8_linear (Ada sm_89 only)"),
    Scheme("fp8-torch", _F8, "torch", False, "torch._scaled_mm with row-wise scales (CPU and CUDA)"),
    # int8 per-channel weights, per-token activations
    Scheme("int8-triton", _I8, "triton", True, "our Triton W8A8 int8 GEMM with fused per-token quantization"),
    Scheme("int8-vllm", _I8, "vllm", True, "vLLM CUTLASS cutlass_scaled_mm"),
    Scheme("int8-sgl", _I8, "sgl", True, "sgl-kernel int8_scaled_mm"),
    Scheme("int8-torchao", _I8, "torchao", True, "torchao int8 dynamic-activation int8-weight matmul"),
    Scheme("int8-q8f", _I8, "q8f", True, "Q8-Kernels q8_linear (Ada sm_89 only)"),
    Scheme("int8-torch", _I8, "torch", False, "torch._int_mm (CPU and CUDA)"),
    # int4 weight-only, symmetric groups of 128
    Scheme("int4-g128-marlin", _I4, "marlin", True, "Marlin W4A16 (vLLM's Marlin ops or the marlin package)"),
    Scheme("int4-g128-triton", _I4, "triton", False, "our Triton W4A16 GEMM"),
    Scheme("int4-g128-torch", _I4, "torch", False, "PyTorch int4 weight-only tinygemm ops (CPU and CUDA)"),
    # fp8 weights with 128x128 block scales, activations per token-group of 128
    Scheme("fp8-b128-deepgemm", _B, "deepgemm", True, "DeepGEMM fp8_gemm_nt (Hopper)"),
    Scheme("fp8-b128-triton", _B, "triton", False, "our Triton block-scaled fp8 GEMM"),
    Scheme("fp8-b128-torch", _B, "torch", False, "dequantize + matmul; correct everywhere, not fast"),
)

REGISTRY: dict[str, Scheme] = {}
for _s in SCHEMES:
    if _s.name in REGISTRY:
        raise RuntimeError(f"scheme {_s.name!r} registered twice")
    if _s.name != f"{_s.fmt.short}-{_s.kernel}":
        raise RuntimeError(f"scheme {_s.name!r} must be named <format short>-<kernel>")
    REGISTRY[_s.name] = _s

SCHEME_NAMES: tuple[str, ...] = tuple(REGISTRY)
OPTION_NAMES: tuple[str, ...] = (NONE, AUTO, *SCHEME_NAMES)  # what the *_quant config groups offer


class UnknownScheme(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


def get_scheme(name: str) -> Scheme:
    """The registered scheme ``name``; a typo raises with the close matches and the full list."""
    try:
        return REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, OPTION_NAMES, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownScheme(
            f"unknown quantization scheme {name!r}.{hint} Schemes: {', '.join(OPTION_NAMES)}"
        ) from None


def schemes_for_format(fmt: str) -> list[Scheme]:
    """Schemes of one format in order of preference."""
    return [s for s in SCHEMES if s.format == fmt]
