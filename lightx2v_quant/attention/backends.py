"""Attention backends beyond torch SDPA: flash-attn 2 / 3, SageAttention 2 (when installed) and our
low-precision Triton kernels. Each has a function over [B, L, heads, head_dim] tensors (the DIT's layout)
and an availability check that names what is missing. Libraries are imported on first use, never at
import time, so a missing one costs nothing until it is asked for (and then fails at launch)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import torch

Fn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class BackendSpec:
    name: str
    fn: Fn
    library: str | None  # Python module that must import
    min_sm: int  # CUDA compute capability as an integer (sm_90 -> 90); 0: also runs on the CPU
    max_sm: int | None
    install_hint: str
    description: str

    def problem(self, device: str, sm: int | None) -> str | None:
        """Why this backend cannot run on ``device`` (cuda / cpu) with compute capability ``sm``, or None."""
        if self.min_sm and device != "cuda":
            return f"attention backend '{self.name}' runs on CUDA GPUs only, not on {device}"
        if device == "cuda" and sm is not None:
            if sm < self.min_sm or (self.max_sm is not None and sm > self.max_sm):
                need = f"sm_{self.min_sm}" + (f"..sm_{self.max_sm}" if self.max_sm else "+")
                return f"attention backend '{self.name}' needs {need}; this GPU is sm_{sm}"
        if self.library:
            try:
                importlib.import_module(self.library)
            except Exception as exc:  # ImportError, or a broken binary raising OSError / RuntimeError
                return (
                    f"attention backend '{self.name}' needs the Python package '{self.library}', which does "
                    f"not import here ({exc}); {self.install_hint}"
                )
        return None


def _flash2(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from flash_attn import flash_attn_func

    return flash_attn_func(q, k, v)  # [B, L, H, D] in and out


def _flash3(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from flash_attn_interface import flash_attn_func

    out = flash_attn_func(q, k, v)
    return out[0] if isinstance(out, tuple) else out  # some releases also return the log-sum-exp


def _sage2(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from sageattention import sageattn

    return sageattn(q, k, v, tensor_layout="NHD", is_causal=False)


# Our low-precision Triton backends -> whether P.V runs in fp8 (else in the input dtype)
LOWP_PV_FP8: dict[str, bool] = {"int8qk-fp8pv": True, "int8qk": False}


def _int8qk_fp8pv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from lightx2v_quant.attention.lowp_triton import lowp_attention

    return lowp_attention(q, k, v, pv_fp8=True)


def _int8qk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from lightx2v_quant.attention.lowp_triton import lowp_attention

    return lowp_attention(q, k, v, pv_fp8=False)


SPECS: tuple[BackendSpec, ...] = (
    BackendSpec(
        "flash_attn2",
        _flash2,
        "flash_attn",
        80,
        None,
        "pip install flash-attn --no-build-isolation",
        "FlashAttention-2 (bf16/fp16)",
    ),
    BackendSpec(
        "flash_attn3",
        _flash3,
        "flash_attn_interface",
        90,
        90,
        "build FlashAttention-3 from flash-attention/hopper (python setup.py install)",
        "FlashAttention-3 for Hopper (bf16/fp16)",
    ),
    BackendSpec(
        "sage_attn2",
        _sage2,
        "sageattention",
        80,
        None,
        "pip install sageattention==2.2.0 --no-build-isolation (CUDA build)",
        "SageAttention 2 (int8 Q.K, fp8 P.V; CUDA kernels)",
    ),
    BackendSpec(
        "int8qk-fp8pv",
        _int8qk_fp8pv,
        "triton",
        89,
        None,
        "pip install triton",
        "ours, Triton: int8 Q.K (K smoothing), fp8 P.V (V smoothing)",
    ),
    BackendSpec(
        "int8qk",
        _int8qk,
        "triton",
        80,
        None,
        "pip install triton",
        "ours, Triton: int8 Q.K (K smoothing), P.V in bf16 / fp16",
    ),
)
