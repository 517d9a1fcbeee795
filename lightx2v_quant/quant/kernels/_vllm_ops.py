"""vLLM's compiled ops (``torch.ops._C.*``), found once per process, from one of two places.

1. ``LIGHTX2V_QUANT_VLLM_OPS=/path/to/_C_stable_libtorch.abi3.so``: the ops library alone, loaded with
   ``torch.ops.load_library``. vLLM >= 0.2x builds it on libtorch's stable ABI, so it loads into other
   PyTorch versions than the one the vllm wheel pins (checked: vLLM 0.33.0's library in PyTorch 2.11).
2. Otherwise an installed ``vllm`` package: importing ``vllm._custom_ops`` loads the same library.

When the variable is set, it is the only place looked at: a wrong path is an error, never a quiet
switch to the package. Kernels then call ``torch.ops._C.<op>`` with the schemas of vLLM 0.33.
"""

from __future__ import annotations

import importlib
import os

import torch

ENV = "LIGHTX2V_QUANT_VLLM_OPS"
PIN = "vllm==0.33.0"  # the release whose op schemas the adapters are written against

HOW_TO = (
    f"either `pip install {PIN}` (it pins its own torch), or, to keep your torch, take "
    f"vllm/_C_stable_libtorch.abi3.so out of the {PIN} wheel (`pip download --no-deps {PIN}` and unzip) "
    f"and set {ENV}=/path/to/_C_stable_libtorch.abi3.so"
)

# env value (or None) -> (where the ops came from, or None; problem, or None)
_LOADED: dict[str | None, tuple[str | None, str | None]] = {}


def _load_from_path(path: str) -> tuple[str | None, str | None]:
    if not os.path.isfile(path):
        return None, f"{ENV}={path} names no file; point it at vLLM's _C_stable_libtorch.abi3.so or unset it"
    try:
        torch.ops.load_library(path)
    except Exception as exc:  # OSError (missing CUDA libraries, wrong ABI), RuntimeError
        return None, f"{ENV}={path} could not be loaded into torch {torch.__version__}: {exc}"
    return f"ops library {path}", None


def _load_from_package() -> tuple[str | None, str | None]:
    try:
        importlib.import_module("vllm._custom_ops")
    except Exception as exc:  # ImportError, or a binary built for another torch/CUDA
        return None, f"vLLM's ops are not available ({type(exc).__name__}: {exc}); {HOW_TO}"
    return "vllm package (vllm._custom_ops)", None


def load() -> tuple[str | None, str | None]:
    """(source, None) once vLLM's ops are registered in ``torch.ops._C``; (None, problem) otherwise."""
    key = os.environ.get(ENV) or None
    if key not in _LOADED:
        _LOADED[key] = _load_from_path(key) if key else _load_from_package()
    return _LOADED[key]


def missing_ops(*names: str) -> list[str]:
    """The names among ``names`` that ``torch.ops._C`` lacks (call after a successful ``load``)."""
    missing = []
    for name in names:
        try:
            getattr(torch.ops._C, name)
        except (AttributeError, RuntimeError):
            missing.append(name)
    return missing


def problem(*op_names: str) -> str | None:
    """Why the named vLLM ops cannot be called here, or None."""
    source, why = load()
    if why:
        return why
    missing = missing_ops(*op_names)
    if missing:
        return (
            f"vLLM's ops from {source} lack {', '.join(missing)} (these adapters follow {PIN}'s op schemas); "
            f"{HOW_TO}"
        )
    return None


def source() -> str | None:
    """Where the loaded ops came from (for reports), or None when they are not loaded."""
    return load()[0]


def reset_cache() -> None:
    """Forget load attempts (tests change the environment variable). A loaded library stays loaded."""
    _LOADED.clear()
