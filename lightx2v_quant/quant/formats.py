"""Quantization formats: the numerics and the tensors on disk, each with one pure-PyTorch reference.

A format says how a weight is stored (dtype, granularity, scale shapes) and how activations are
quantized at run time. The reference functions here run on CPU and are the ground truth that every
kernel is tested against. Kernels may re-lay the tensors out after loading; the disk layout is this one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from lightx2v_quant.quant import lightx2v_numerics as lx

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite float8_e4m3fn
INT8_MAX = 127.0
INT4_MAX = 7.0  # symmetric int4: q in [-8, 7], scale = group amax / 7
AMAX_EPS = 1e-8  # floor on |x|max so an all-zero row gets a tiny scale, not a division by zero
GROUP = 128  # group / block size of the int4-g128 and fp8-block128 formats


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of one on-disk tensor of a quantized linear."""

    shape: tuple[int, ...]
    dtype: torch.dtype


class Format:
    """Base class of a quantization format. Subclasses implement the reference numerics.

    Tensors of a quantized linear layer are named like LightX2V's files: ``weight`` and ``weight_scale``
    (plus an optional ``bias`` kept in high precision, not described here).
    """

    name: str = ""  # e.g. "w8a8-fp8-channel"
    short: str = ""  # prefix of scheme names, e.g. "fp8"
    weight_dtype: torch.dtype = torch.float32
    description: str = ""
    quantizes_activations: bool = True

    # -- layout -------------------------------------------------------------------------------
    def tensor_specs(self, out_features: int, in_features: int) -> dict[str, TensorSpec]:
        raise NotImplementedError

    def shape_problem(self, out_features: int, in_features: int) -> str | None:
        """Why a linear of this shape cannot use the format, or None when it can."""
        return None

    # -- reference numerics ---------------------------------------------------------------------
    def quantize_weight(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """[N, K] float weight -> tensors in the layer's dtypes (fp32 scales). The same bytes on any device."""
        tensors = self.checkpoint_tensors(weight)
        tensors["weight_scale"] = tensors["weight_scale"].float()
        return tensors

    def checkpoint_tensors(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint stores for one linear (per-channel scales keep the source dtype, as
        LightX2V's files do; our formats use fp32)."""
        raise NotImplementedError

    def dequantize_weight(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """On-disk tensors -> [N, K] fp32 weight."""
        raise NotImplementedError

    def quantize_activation(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[M, K] activation -> (quantized [M, K], fp32 scales). Formats without activation quant raise."""
        raise NotImplementedError(f"{self.name} keeps activations in high precision")

    def dequantize_activation(self, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} keeps activations in high precision")

    def reference_linear(
        self,
        x: torch.Tensor,
        tensors: Mapping[str, torch.Tensor],
        bias: torch.Tensor | None = None,
        out_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """y = quant(x) @ dequant(W).T + bias, computed in float64 (the ground truth for kernels)."""
        out_dtype = out_dtype or x.dtype
        k = x.shape[-1]
        x2 = x.reshape(-1, k)
        if self.quantizes_activations:
            q, s = self.quantize_activation(x2)
            xd = self.dequantize_activation(q, s).double()
        else:
            xd = x2.double()
        w = self.dequantize_weight(tensors).double()
        y = xd @ w.t()
        if bias is not None:
            y = y + bias.double()
        return y.to(out_dtype).reshape(*x.shape[:-1], w.shape[0])


def _row_amax(x: torch.Tensor) -> torch.Tensor:
    return x.float().abs().amax(dim=-1, keepdim=True).clamp(min=AMAX_EPS)


def div_exact(t: torch.Tensor, divisor: float) -> torch.Tensor:
    """``t / divisor`` with IEEE division on every device.

    PyTorch's CUDA kernels divide by a Python number as a multiplication by its fp32 reciprocal, which
    differs from the true quotient in the last bit for some inputs (CPU divides exactly). A divisor tensor
    on ``t``'s device keeps the true division, so scales are the same bits on CPU and GPU.
    """
    return t / torch.full((1,), divisor, dtype=t.dtype, device=t.device)


def fp8_cast(x: torch.Tensor) -> torch.Tensor:
    """Saturating cast of a float tensor (already divided by its scale) to float8_e4m3fn."""
    return x.clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def int8_cast(x: torch.Tensor) -> torch.Tensor:
    """Round half to even, saturate to [-128, 127], int8."""
    return torch.round(x).clamp(-128, 127).to(torch.int8)


class _PerChannel(Format):
    """W8A8 with per-output-channel weight scales and dynamic per-token activation scales."""

    qmax: float = 1.0

    def tensor_specs(self, out_features: int, in_features: int) -> dict[str, TensorSpec]:
        return {
            "weight": TensorSpec((out_features, in_features), self.weight_dtype),
            "weight_scale": TensorSpec((out_features, 1), torch.float32),
        }

    def _cast(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _lightx2v(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def checkpoint_tensors(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        # LightX2V's converter numerics (math in the source dtype, its rounding): files interchange.
        q, scale = self._lightx2v(weight)  # scale [N, 1]
        return {"weight": q, "weight_scale": scale}

    def dequantize_weight(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return tensors["weight"].float() * tensors["weight_scale"].float().reshape(-1, 1)

    def quantize_activation(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xf = x.float()
        scale = div_exact(_row_amax(xf), self.qmax)  # [M, 1]
        return self._cast(xf / scale), scale

    def dequantize_activation(self, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return q.float() * scale.float().reshape(-1, 1)


class Fp8Channel(_PerChannel):
    name = "w8a8-fp8-channel"
    short = "fp8"
    weight_dtype = FP8_DTYPE
    qmax = FP8_MAX
    description = "fp8 e4m3 weights with per-output-channel scales; dynamic per-token fp8 activations"

    def _cast(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_cast(x)

    def _lightx2v(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return lx.lightx2v_fp8_channel(w)


class Int8Channel(_PerChannel):
    name = "w8a8-int8-channel"
    short = "int8"
    weight_dtype = torch.int8
    qmax = INT8_MAX
    description = "int8 weights with per-output-channel scales; dynamic per-token int8 activations"

    def _cast(self, x: torch.Tensor) -> torch.Tensor:
        return int8_cast(x)

    def _lightx2v(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return lx.lightx2v_int8_channel(w)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int8 values in [-8, 7], [N, K] (K even) -> uint8 [N, K/2]; element 2i in the low nibble, stored +8."""
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    return u[:, 0::2] | (u[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K/2] -> int8 [N, K] in [-8, 7] (inverse of pack_int4)."""
    lo = (packed & 0x0F).to(torch.int8) - 8
    hi = (packed >> 4).to(torch.int8) - 8
    return torch.stack([lo, hi], dim=-1).reshape(packed.shape[0], packed.shape[1] * 2)


class Int4G128(Format):
    name = "w4a16-int4-g128"
    short = "int4-g128"
    weight_dtype = torch.uint8
    quantizes_activations = False
    description = (
        "int4 weights, symmetric groups of 128 along K (scale = amax/7, values +8 packed two per byte, "
        "low nibble first); bf16/fp16 activations"
    )

    def tensor_specs(self, out_features: int, in_features: int) -> dict[str, TensorSpec]:
        return {
            "weight": TensorSpec((out_features, in_features // 2), torch.uint8),
            "weight_scale": TensorSpec((out_features, in_features // GROUP), torch.float32),
        }

    def shape_problem(self, out_features: int, in_features: int) -> str | None:
        if in_features % GROUP:
            return f"int4-g128 needs in_features % {GROUP} == 0, got {in_features}"
        return None

    def checkpoint_tensors(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        lx.check_weight(weight)
        n, k = weight.shape
        problem = self.shape_problem(n, k)
        if problem:
            raise ValueError(problem)
        w = weight.float().reshape(n, k // GROUP, GROUP)
        amax = lx.no_nan(w.abs().amax(dim=-1)).clamp(min=AMAX_EPS)
        scale = div_exact(amax, INT4_MAX)  # [N, K/128]; exact division: the same bytes on any device
        q = torch.round(w / scale.unsqueeze(-1)).clamp(-8, 7).to(torch.int8).reshape(n, k)
        return {"weight": pack_int4(q), "weight_scale": scale}

    def dequantize_weight(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        q = unpack_int4(tensors["weight"]).float()
        n, k = q.shape
        scale = tensors["weight_scale"].float()
        return (q.reshape(n, k // GROUP, GROUP) * scale.unsqueeze(-1)).reshape(n, k)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class Fp8Block128(Format):
    name = "w8a8-fp8-block128"
    short = "fp8-b128"
    weight_dtype = FP8_DTYPE
    description = (
        "fp8 e4m3 weights with one scale per 128x128 block; activations fp8 with per-token groups of 128"
    )

    def tensor_specs(self, out_features: int, in_features: int) -> dict[str, TensorSpec]:
        return {
            "weight": TensorSpec((out_features, in_features), FP8_DTYPE),
            "weight_scale": TensorSpec(
                (_ceil_div(out_features, GROUP), _ceil_div(in_features, GROUP)), torch.float32
            ),
        }

    def shape_problem(self, out_features: int, in_features: int) -> str | None:
        if in_features % GROUP:
            return f"fp8-block128 needs in_features % {GROUP} == 0, got {in_features}"
        return None

    @staticmethod
    def _blocks(w: torch.Tensor) -> torch.Tensor:
        """[N, K] -> zero-padded [N/128, 128, K/128, 128] view of blocks."""
        n, k = w.shape
        nb, kb = _ceil_div(n, GROUP), _ceil_div(k, GROUP)
        padded = torch.zeros(nb * GROUP, kb * GROUP, dtype=w.dtype, device=w.device)
        padded[:n, :k] = w
        return padded.reshape(nb, GROUP, kb, GROUP)

    def checkpoint_tensors(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        lx.check_weight(weight)
        n, k = weight.shape
        problem = self.shape_problem(n, k)
        if problem:
            raise ValueError(problem)
        blocks = self._blocks(weight.float())
        amax = lx.no_nan(blocks.abs().amax(dim=(1, 3))).clamp(min=AMAX_EPS)
        scale = div_exact(amax, FP8_MAX)  # [N/128, K/128]
        q = fp8_cast(blocks / scale[:, None, :, None])
        q = q.reshape(scale.shape[0] * GROUP, scale.shape[1] * GROUP)[:n, :k].contiguous()
        return {"weight": q, "weight_scale": scale}

    def dequantize_weight(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        w = tensors["weight"].float()
        n, k = w.shape
        s = tensors["weight_scale"].float()
        full = s.repeat_interleave(GROUP, 0).repeat_interleave(GROUP, 1)[:n, :k]
        return w * full

    def quantize_activation(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, k = x.shape
        if k % GROUP:
            raise ValueError(f"fp8-block128 activations need K % {GROUP} == 0, got {k}")
        g = x.float().reshape(m, k // GROUP, GROUP)
        scale = div_exact(g.abs().amax(dim=-1).clamp(min=AMAX_EPS), FP8_MAX)  # [M, K/128]
        return fp8_cast(g / scale.unsqueeze(-1)).reshape(m, k), scale

    def dequantize_activation(self, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        m, k = q.shape
        return (q.float().reshape(m, k // GROUP, GROUP) * scale.float().unsqueeze(-1)).reshape(m, k)


FORMATS: dict[str, Format] = {f.name: f for f in (Fp8Channel(), Int8Channel(), Int4G128(), Fp8Block128())}


def get_format(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise KeyError(f"unknown quantization format {name!r}; formats: {', '.join(FORMATS)}") from None
