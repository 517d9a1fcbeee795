"""The kernel interface: what a GEMM backend must say about itself and how it is called.

A kernel is small and honest. It states what it needs (library, device, compute capability, shapes)
and returns a reason when it cannot run; it re-lays weights out in ``prepare`` (after loading, on the
compute device) and computes ``apply(layer, x[M, K]) -> y[M, N]``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, ClassVar

import torch

if TYPE_CHECKING:
    from lightx2v_quant.hardware import HardwareSpec
    from lightx2v_quant.quant.formats import Format
    from lightx2v_quant.quant.linear import QuantLinear


class KernelUnavailable(RuntimeError):
    """Raised when a kernel is used on a machine or shape it cannot handle."""


class Kernel:
    """Base class. Subclasses set the class attributes and implement ``prepare`` and ``apply``."""

    name: ClassVar[str] = ""
    formats: ClassVar[tuple[str, ...]] = ()
    devices: ClassVar[tuple[str, ...]] = ("cuda",)
    # Compute capabilities (as sm integers) the kernel runs on; per format when they differ.
    min_sm: ClassVar[int] = 0
    min_sm_by_format: ClassVar[dict[str, int]] = {}
    only_sm: ClassVar[tuple[int, ...]] = ()  # non-empty: runs on exactly these (Q8-Kernels: sm_89)
    library: ClassVar[str | None] = None  # Python module to import, None for no library
    install_hint: ClassVar[str] = ""

    # -- what it needs ----------------------------------------------------------------------------
    def hardware_problem(self, fmt: str, hw: HardwareSpec) -> str | None:
        """Why this kernel cannot run ``fmt`` on ``hw`` (device / compute capability), or None."""
        if hw.device not in self.devices:
            where = " or ".join(self.devices)
            return f"kernel '{self.name}' runs on {where}, not on {hw.label()}"
        if hw.is_cuda:
            if self.only_sm and hw.sm not in self.only_sm:
                allowed = ", ".join(f"sm_{s}" for s in self.only_sm)
                return f"kernel '{self.name}' is built for {allowed} only; {hw.label()} is sm_{hw.sm}"
            need = self.min_sm_by_format.get(fmt, self.min_sm)
            if hw.sm < need:
                return f"kernel '{self.name}' needs sm_{need}+ for {fmt}; {hw.label()} is sm_{hw.sm}"
        return None

    def library_problem(self) -> str | None:
        """Why the kernel's library cannot be used here, or None. Imports lazily."""
        if self.library is None:
            return None
        try:
            importlib.import_module(self.library)
        except Exception as exc:  # ImportError, or a broken binary raising OSError/RuntimeError
            hint = f" ({self.install_hint})" if self.install_hint else ""
            return f"kernel '{self.name}' needs the Python package '{self.library}', which does not import: {exc}{hint}"
        return None

    def availability(self, fmt: str, hw: HardwareSpec) -> tuple[bool, str]:
        """(True, "") when the kernel can run ``fmt`` on ``hw``; else (False, every reason)."""
        reasons = [r for r in (self.hardware_problem(fmt, hw), self.library_problem()) if r]
        if fmt not in self.formats:
            reasons.insert(0, f"kernel '{self.name}' does not implement format {fmt}")
        return (not reasons, "; ".join(reasons))

    def shape_problem(self, fmt: Format, out_features: int, in_features: int) -> str | None:
        """Why a linear of this shape cannot use the kernel (e.g. K % 16), or None."""
        return fmt.shape_problem(out_features, in_features)

    def notes(self, fmt: str) -> str:
        """For reports: what else the kernel relies on here (which activation quantizer, library path)."""
        return ""

    # -- what it does ---------------------------------------------------------------------------
    def prepare(self, layer: QuantLinear) -> None:
        """Re-lay out ``layer``'s tensors for this kernel, once, after loading on the compute device.

        Derived tensors go into non-persistent buffers (``layer.register_buffer(..., persistent=False)``)
        so that moving or offloading the module moves them too, and the state dict keeps the disk layout.
        """

    def apply(self, layer: QuantLinear, x: torch.Tensor) -> torch.Tensor:
        """x [M, K] in the run dtype -> y [M, N] in x.dtype, bias included."""
        raise NotImplementedError

    # -- optional: activations quantized by a fused producer ------------------------------------
    def prequantized_input(self, layer: QuantLinear) -> str | None:
        """The per-token activation format ("fp8" / "int8", keys of ``quant.activation.PER_TOKEN_FORMATS``)
        that ``apply_quantized`` takes for ``layer``, or None when the kernel only takes the run dtype.

        A producer (the DIT's fused LayerNorm + modulation + quantization) emits it only when every
        consumer of its output says yes; the numerics are the format's own per-token quantization."""
        return None

    def apply_quantized(self, layer: QuantLinear, xq: torch.Tensor, x_scale: torch.Tensor,
                        out_dtype: torch.dtype) -> torch.Tensor:
        """xq [M, K] (fp8 e4m3 / int8) with per-token scales x_scale [M, 1] fp32 -> y [M, N] in
        ``out_dtype``, bias included."""
        raise NotImplementedError(f"kernel '{self.name}' takes no pre-quantized activations")

    # -- optional: the residual add in the GEMM's epilogue ---------------------------------------------
    def adds_into(self, layer: QuantLinear, residual: torch.Tensor, gate: torch.Tensor | None) -> bool:
        """Whether ``apply_add_`` takes this residual [M, N] (and gate: None or [N] fp32) for ``layer``."""
        return False

    def apply_add_(self, layer: QuantLinear, x, residual: torch.Tensor, gate: torch.Tensor | None) -> None:
        """IN PLACE: residual [M, N] += layer(x) * gate (or + layer(x)), the product rounded to residual's
        dtype and the sum done in fp32, as ``fused.gated_residual_`` does; x [M, K] in the run dtype, or a
        ``QuantizedActivation`` when ``prequantized_input`` says so."""
        raise NotImplementedError(f"kernel '{self.name}' has no residual-add epilogue")


def pad_rows(x: torch.Tensor, min_rows: int) -> tuple[torch.Tensor, int]:
    """Pad a 2-D tensor with zero rows up to ``min_rows`` (for kernels that reject small M)."""
    m = x.shape[0]
    if m >= min_rows:
        return x, m
    return torch.cat([x, x.new_zeros(min_rows - m, x.shape[1])]), m
