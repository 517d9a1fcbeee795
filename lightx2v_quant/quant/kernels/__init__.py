"""GEMM kernels, one module each, imported lazily by name.

The scheme registry (``quant/schemes.py``) names the kernels; this table says which module holds each.
A module defines ``KERNEL``, an instance of :class:`~lightx2v_quant.quant.kernels.base.Kernel`.
"""

from __future__ import annotations

import importlib

from lightx2v_quant.quant.kernels.base import Kernel, KernelUnavailable

# kernel name -> module under lightx2v_quant.quant.kernels
KERNEL_MODULES: dict[str, str] = {
    "torch": "native_torch",
    "triton": "native_triton",
    "vllm": "vllm",
    "sgl": "sgl",
    "q8f": "q8f",
    "torchao": "torchao",
    "marlin": "marlin",
    "deepgemm": "deepgemm",
}

_CACHE: dict[str, Kernel] = {}


class MissingAdapter(Kernel):
    """Stands for a kernel whose adapter module is absent from this installation: never available."""

    def __init__(self, name: str, error: Exception) -> None:
        self.name = name  # type: ignore[misc]
        self._error = error

    def availability(self, fmt: str, hw) -> tuple[bool, str]:
        return False, f"kernel '{self.name}' has no adapter in this version of lightx2v_quant ({self._error})"


def get_kernel(name: str) -> Kernel:
    """The kernel object for ``name``; unknown names raise KeyError listing the known ones."""
    if name not in KERNEL_MODULES:
        raise KeyError(f"unknown kernel {name!r}; kernels: {', '.join(KERNEL_MODULES)}")
    if name not in _CACHE:
        module_name = f"{__name__}.{KERNEL_MODULES[name]}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            _CACHE[name] = MissingAdapter(name, exc)
        else:
            _CACHE[name] = module.KERNEL
    return _CACHE[name]


__all__ = ["KERNEL_MODULES", "Kernel", "KernelUnavailable", "get_kernel"]
