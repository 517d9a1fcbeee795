"""Test-side implementations written from the LightX2V spec (lightx2v_formats.md sections 3 and 8),
independent of the package's code: a numpy port of qtorch's e4m3 rounding, a scalar one for pinned
edge values, LightX2V's per-channel quantizers, and a tiny stand-in DIT with the official key names.
"""

from __future__ import annotations

import struct

import numpy as np
import torch
from torch import nn

# ---------------------------------------------------------------------------------------------------
# qtorch float_quantize(x, 4, 3, "nearest"), as its C++ reads: bit tricks on the fp32 pattern.


def qtorch_scalar(v: float) -> float:
    """One value, with Python ints for the bits and numpy float32 for the fp32 adds."""
    f = np.float32(v)
    bits = struct.unpack("<I", struct.pack("<f", f))[0]
    exp = ((bits << 1) & 0xFFFFFFFF) >> 24
    target_exp = exp - 127

    def round_bits(b: int) -> int:
        return ((b + (1 << 19)) & 0xFFFFFFFF) & ~((1 << 20) - 1) & 0xFFFFFFFF

    def to_f(b: int) -> np.float32:
        return np.frombuffer(struct.pack("<I", b), dtype=np.float32)[0]

    if target_exp < -6:
        shift_bits = ((127 - 6) << 23) | (bits >> 31 << 31)
        shift = to_f(shift_bits)
        val = np.float32(f + shift)
        vb = struct.unpack("<I", struct.pack("<f", val))[0]
        return float(np.float32(to_f(round_bits(vb)) - shift))
    q = round_bits(bits)
    if ((q << 1) & 0xFFFFFFFF) >> 24 > 127 + 8:
        q = (bits >> 31 << 31) | ((127 + 8) << 23) | (0b111 << 20)
    return float(to_f(q))


def qtorch_numpy(x: np.ndarray) -> np.ndarray:
    """Vectorized numpy port (uint32 arithmetic) for whole tensors."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    bits = x.view(np.uint32)
    exp = (bits >> np.uint32(23)) & np.uint32(0xFF)
    half, keep = np.uint32(1 << 19), np.uint32(~((1 << 20) - 1) & 0xFFFFFFFF)
    q = (bits + half) & keep
    sign = bits & np.uint32(0x80000000)
    over = ((q >> np.uint32(23)) & np.uint32(0xFF)) > 127 + 8
    q = np.where(over, sign | np.uint32(((127 + 8) << 23) | (0b111 << 20)), q)
    normal = q.view(np.float32)
    shift = np.where(sign != 0, np.float32(-(2.0**-6)), np.float32(2.0**-6)).astype(np.float32)
    val = (x + shift).astype(np.float32)
    sub = ((val.view(np.uint32) + half) & keep).view(np.float32) - shift
    return np.where(exp < 127 - 6, sub, normal).astype(np.float32)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().numpy()


# ---------------------------------------------------------------------------------------------------
# LightX2V's converter (tools/convert/quant/quant.py) as the spec states it: math in the source dtype.


def spec_fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    amax = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-5)
    scales = amax / 448.0
    scaled = torch.clip(w / scales, -448.0, 448.0)
    q = torch.from_numpy(qtorch_numpy(_np(scaled.float()))).to(torch.float8_e4m3fn)
    return q, scales.view(w.shape[0], -1)


def spec_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    amax = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-5)
    scales = amax / 127
    q = torch.clamp(torch.round(w / scales), -128, 127).to(torch.int8)
    return q, scales.view(w.shape[0], -1)


SPEC_RULES = {  # model type -> (key index, targets, deleted substrings)
    "dit": (2, {"self_attn", "cross_attn", "ffn"}, ()),
    "t5": (2, {"attn", "ffn"}, ()),
    "clip": (3, {"attn", "mlp"}, ("textual",)),
}


def spec_convert(
    sd: dict[str, torch.Tensor], model_type: str, linear: str, non_linear_dtype: torch.dtype | None
) -> dict[str, torch.Tensor]:
    """What LightX2V's converter writes for an original state dict (without its "ca" deletion, which
    removes nothing from original Wan files): source order, scales appended at the end."""
    idx, targets, deleted = SPEC_RULES[model_type]
    out: dict[str, torch.Tensor] = {}
    scales: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        if any(d in key for d in deleted):
            continue
        parts = key.split(".")
        if t.dim() == 2 and len(parts) > idx and parts[idx] in targets:
            q, s = spec_fp8(t) if linear == "fp8" else spec_int8(t)
            out[key] = q
            scales[key + "_scale"] = s
        else:
            out[key] = t.to(non_linear_dtype) if non_linear_dtype and t.is_floating_point() else t
    out.update(scales)
    return out


def raw(t: torch.Tensor) -> torch.Tensor:
    """Bytes view for exact comparisons (fp8 has no torch.equal on every build)."""
    return t.contiguous().reshape(-1).view(torch.uint8)


def same_bytes(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Keys whose dtype, shape or bytes differ (plus keys in only one)."""
    bad = sorted(set(a) ^ set(b))
    for k in set(a) & set(b):
        if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape or not torch.equal(raw(a[k]), raw(b[k])):
            bad.append(k)
    return bad


# ---------------------------------------------------------------------------------------------------
# A stand-in DIT with the official key names (dit_shapes, t2v) and a forward that uses every linear.


class _RMS(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class _Attn(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.norm_q, self.norm_k = _RMS(d), _RMS(d)

    def forward(self, x, ctx):
        q, k, v = self.norm_q(self.q(x)), self.norm_k(self.k(ctx)), self.v(ctx)
        a = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        return self.o(a @ v)


class _Block(nn.Module):
    def __init__(self, d: int, f: int) -> None:
        super().__init__()
        self.modulation = nn.Parameter(torch.randn(1, 6, d) / d**0.5)
        self.self_attn = _Attn(d)
        self.norm3 = nn.LayerNorm(d)
        self.cross_attn = _Attn(d)
        self.ffn = nn.Sequential(nn.Linear(d, f), nn.GELU(approximate="tanh"), nn.Linear(f, d))

    def forward(self, x, ctx):
        m = self.modulation.chunk(6, dim=1)
        x = x + self.self_attn(x * (1 + m[1]) + m[0], x * (1 + m[1]) + m[0]) * m[2]
        x = x + self.cross_attn(self.norm3(x), ctx)
        return x + self.ffn(x * (1 + m[4]) + m[3]) * m[5]


class _Head(nn.Module):
    def __init__(self, d: int, out: int) -> None:
        super().__init__()
        self.modulation = nn.Parameter(torch.randn(1, 2, d) / d**0.5)
        self.head = nn.Linear(d, out)

    def forward(self, x):
        return self.head(x * (1 + self.modulation[:, 1]) + self.modulation[:, 0])


class TinyDit(nn.Module):
    """Official-name stand-in for the Wan DIT (state dict == synthetic.dit_shapes(..., i2v=False))."""

    QUANT_PATTERNS = (
        "blocks.*.self_attn.[qkvo]",
        "blocks.*.cross_attn.[qkvo]",
        "blocks.*.ffn.0",
        "blocks.*.ffn.2",
    )

    def __init__(self, dim=128, ffn_dim=256, num_layers=2, in_dim=16, out_dim=16, text_dim=64, freq_dim=32):
        super().__init__()
        self.patch_embedding = nn.Conv3d(in_dim, dim, (1, 2, 2), stride=(1, 2, 2))
        self.text_embedding = nn.Sequential(
            nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim)
        )
        self.time_embedding = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(_Block(dim, ffn_dim) for _ in range(num_layers))
        self.head = _Head(dim, out_dim * 4)

    def forward(self, x, ctx):
        """x [B, L, dim] tokens, ctx [B, Lc, text_dim] -> [B, L, out*4]."""
        c = self.text_embedding(ctx)
        for b in self.blocks:
            x = b(x, c)
        return self.head(x)
