"""Architecture of a Wan DIT (``WanDiTConfig``) and the presets of the released models."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WanDiTConfig:
    """The constructor arguments of the official ``WanModel`` that change between released models.

    Field names equal the official ``config.json`` keys (and ``DitArch`` in ``lightx2v_quant.config``),
    so ``WanDiTConfig(**cfg.model.dit)`` works on a Hydra config.
    """

    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    in_dim: int = 16  # latent channels (+ the I2V conditioning channels of ``y``)
    out_dim: int = 16
    text_dim: int = 4096  # umT5-XXL width
    freq_dim: int = 256  # sinusoidal time embedding width
    text_len: int = 512  # text tokens after zero-padding
    eps: float = 1e-6
    patch_size: tuple[int, int, int] = (1, 2, 2)
    image_dim: int | None = None  # CLIP width (1280) for Wan2.1 I2V; None: text-only cross-attention
    qk_norm: bool = True
    cross_attn_norm: bool = True

    def __post_init__(self) -> None:
        patch = tuple(int(p) for p in self.patch_size)  # a Hydra ListConfig / list becomes a tuple
        object.__setattr__(self, "patch_size", patch)
        problems = []
        if len(patch) != 3 or min(patch) < 1:
            problems.append(f"patch_size must be 3 positive ints (t, h, w), got {list(patch)}")
        if self.num_heads < 1 or self.dim % self.num_heads:
            problems.append(f"dim ({self.dim}) must be a multiple of num_heads ({self.num_heads})")
        elif (self.dim // self.num_heads) % 2:
            problems.append(f"head dim dim/num_heads = {self.dim // self.num_heads} must be even for RoPE")
        if self.freq_dim % 2:
            problems.append(f"freq_dim must be even, got {self.freq_dim}")
        for name in ("dim", "ffn_dim", "num_layers", "in_dim", "out_dim", "text_dim", "text_len"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.image_dim is not None and self.image_dim < 1:
            problems.append(f"image_dim must be positive or None, got {self.image_dim}")
        if problems:
            raise ValueError("invalid WanDiTConfig: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def i2v_image_attention(self) -> bool:
        """True when cross-attention also attends to CLIP image tokens (Wan2.1 I2V)."""
        return self.image_dim is not None

    def replace(self, **changes: Any) -> WanDiTConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, ignore: Sequence[str] = ()) -> WanDiTConfig:
        """Build from a mapping (a Hydra node or an official ``config.json``); unknown keys are an error
        unless listed in ``ignore``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in values if k not in names and k not in ignore)
        if unknown:
            raise ValueError(f"unknown WanDiTConfig field(s) {unknown}; fields: {sorted(names)}")
        return cls(**{k: v for k, v in values.items() if k in names})

    @classmethod
    def preset(cls, name: str) -> WanDiTConfig:
        """One of ``PRESETS`` by name (e.g. ``wan2.1-t2v-14b``, ``tiny-t2v``)."""
        try:
            return PRESETS[name]
        except KeyError:
            close = difflib.get_close_matches(name, PRESETS, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise KeyError(f"unknown Wan DIT preset {name!r}.{hint} Presets: {', '.join(PRESETS)}") from None


_14B = {"dim": 5120, "ffn_dim": 13824, "num_heads": 40, "num_layers": 40}

PRESETS: dict[str, WanDiTConfig] = {
    "wan2.1-t2v-1.3b": WanDiTConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    "wan2.1-t2v-14b": WanDiTConfig(**_14B),
    # 480P and 720P I2V share one architecture
    "wan2.1-i2v-14b": WanDiTConfig(**_14B, in_dim=36, image_dim=1280),
    # Wan2.2 A14B: each expert (high_noise_model/, low_noise_model/) is a 14B-shaped DIT; I2V has no CLIP
    "wan2.2-t2v-a14b-expert": WanDiTConfig(**_14B),
    "wan2.2-i2v-a14b-expert": WanDiTConfig(**_14B, in_dim=36),
    "wan2.2-ti2v-5b": WanDiTConfig(dim=3072, ffn_dim=14336, num_heads=24, num_layers=30, in_dim=48,
                                   out_dim=48),
    # Tests and the embedded default: every dim a multiple of 128 so all quantization formats apply
    "tiny-t2v": WanDiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=256),
    "tiny-i2v": WanDiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=256, in_dim=36,
                             image_dim=128),
}
