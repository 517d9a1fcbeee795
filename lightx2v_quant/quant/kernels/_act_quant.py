"""Dynamic activation quantizers shared by the adapters, each named so reports say which one ran.

Several GEMM libraries ship no activation quantizer of their own (Q8-Kernels' needs a Hadamard
transform, sgl-kernel has no int8 one). An adapter lists the sources it accepts in order of
preference and takes the first that is present; the numerics are the format's in every case
(scale = row amax / qmax), up to rounding of the last bit and the floor on tiny scales.

Per token (``w8a8-fp8-channel`` / ``w8a8-int8-channel``): ``x [M, K] -> (q [M, K], s [M, 1] fp32)``.
Per token-group of 128 (``w8a8-fp8-block128``): ``x [M, K] -> (q [M, K], s [M, K/128] fp32)``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from lightx2v_quant.quant import formats as qf
from lightx2v_quant.quant.kernels import _vllm_ops

FP8, INT8, B128 = "w8a8-fp8-channel", "w8a8-int8-channel", "w8a8-fp8-block128"

QuantFn = Callable[[torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]


@dataclass(frozen=True)
class Quantizer:
    name: str  # e.g. "vLLM dynamic_per_token_scaled_fp8_quant"
    fn: QuantFn

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fn(x)


# -- sources (each returns a Quantizer, or None when absent) ----------------------------------------
def _vllm(fmt: str) -> Quantizer | None:
    op = {
        FP8: "dynamic_per_token_scaled_fp8_quant",
        INT8: "dynamic_scaled_int8_quant",
        B128: "per_token_group_fp8_quant",
    }[fmt]
    if _vllm_ops.problem(op):
        return None

    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.contiguous()
        m, k = x.shape
        if fmt == B128:
            return _vllm_group(x)
        s = torch.empty((m, 1), dtype=torch.float32, device=x.device)
        if fmt == FP8:
            q = torch.empty((m, k), dtype=qf.FP8_DTYPE, device=x.device)
            torch.ops._C.dynamic_per_token_scaled_fp8_quant(q, x, s, None)  # (out, in, scale, scale_ub)
        else:
            q = torch.empty((m, k), dtype=torch.int8, device=x.device)
            torch.ops._C.dynamic_scaled_int8_quant(q, x, s, None)  # (out, in, scale, azp=None: symmetric)
        return q, s

    return Quantizer(f"vLLM {op}", run)


def tma_aligned_rows(m: int) -> int:
    """Rows of an fp32 MN-major scale table padded so each column starts 16-byte aligned (TMA)."""
    return -(-m // 4) * 4


def _vllm_group(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token-group-128 fp8 with the scales written MN-major and TMA-aligned, as DeepGEMM reads them.

    The scale tensor has the logical shape [M, K/128] with strides (1, M rounded up to 4).
    """
    m, k = x.shape
    q = torch.empty((m, k), dtype=qf.FP8_DTYPE, device=x.device)
    s = torch.empty_strided(
        (m, k // qf.GROUP), (1, tma_aligned_rows(m)), dtype=torch.float32, device=x.device
    )
    # (input, out_q, out_s, group, eps, fp8_min, fp8_max, ue8m0 scales, column-major s, TMA-aligned s)
    torch.ops._C.per_token_group_fp8_quant(
        x, q, s, qf.GROUP, qf.AMAX_EPS, -qf.FP8_MAX, qf.FP8_MAX, False, True, True
    )
    return q, s


def _sgl_kernel(fmt: str) -> Quantizer | None:
    if fmt != FP8:
        return None  # sgl-kernel has no per-token int8 quantizer (it lives in sglang proper)
    try:
        from sgl_kernel import sgl_per_token_quant_fp8
    except Exception:
        return None

    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.contiguous()
        q = torch.empty(x.shape, dtype=qf.FP8_DTYPE, device=x.device)
        s = torch.empty((x.shape[0], 1), dtype=torch.float32, device=x.device)
        sgl_per_token_quant_fp8(x, q, s)  # writes q and s in place
        return q, s

    return Quantizer("sgl-kernel sgl_per_token_quant_fp8", run)


def _sglang(fmt: str) -> Quantizer | None:
    if fmt != INT8:
        return None
    try:
        mod = importlib.import_module("sglang.srt.layers.quantization.int8_kernel")
        fn = mod.per_token_quant_int8
    except Exception:
        return None

    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, s = fn(x.contiguous())  # s: [M, 1] fp32
        return q, s.float().reshape(-1, 1)

    return Quantizer("sglang per_token_quant_int8", run)


def _triton(fmt: str) -> Quantizer | None:
    """Our fused Triton quantizers (kernels/triton_ops.py, the `triton` kernel's module)."""
    try:
        ops = importlib.import_module("lightx2v_quant.quant.kernels.triton_ops")
    except Exception:  # no triton, or the module is absent from this version
        return None
    if fmt == B128:
        fn = getattr(ops, "quantize_per_token_group", None)
        if not callable(fn):
            return None
        return Quantizer("lightx2v_quant Triton quantize_per_token_group", lambda x: fn(x, group=qf.GROUP))
    fn = getattr(ops, "quantize_per_token", None)
    if not callable(fn):
        return None
    return Quantizer("lightx2v_quant Triton quantize_per_token", lambda x: fn(x, fmt))


def _torch(fmt: str) -> Quantizer:
    ref = qf.FORMATS[fmt]
    return Quantizer(
        f"PyTorch ops (the {fmt} reference quantizer; several passes over x)", ref.quantize_activation
    )


SOURCES: dict[str, Callable[[str], Quantizer | None]] = {
    "vllm": _vllm,
    "sgl_kernel": _sgl_kernel,
    "sglang": _sglang,
    "triton": _triton,
    "torch": _torch,
}

_CHOSEN: dict[tuple[str, tuple[str, ...]], Quantizer] = {}


def choose(fmt: str, order: Sequence[str]) -> Quantizer:
    """The first quantizer of ``order`` present here (``"torch"`` is always present); cached."""
    key = (fmt, tuple(order))
    if key not in _CHOSEN:
        for source in order:
            found = SOURCES[source](fmt)
            if found is not None:
                _CHOSEN[key] = found
                break
        else:
            raise RuntimeError(f"no activation quantizer for {fmt} among {', '.join(order)}")
    return _CHOSEN[key]


def reset_cache() -> None:
    _CHOSEN.clear()
