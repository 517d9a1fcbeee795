"""Seeded random weights standing in for a checkpoint (random-weight runs and benchmarks).

A ``RandomSource`` is a ``TensorSource``: models load it through the same strict loader as a real file,
so online quantization, dtypes and key checks are exercised exactly as with real weights.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Callable

import torch

from lightx2v_quant.checkpoints.reader import TensorSource

# key, shape -> (mean, std): each tensor is mean + std * N(0, 1); std 0 gives the constant `mean`
Init = Callable[[str, tuple[int, ...]], tuple[float, float]]


class RandomSource(TensorSource):
    """One float32 tensor per key, generated on ``device`` when asked for.

    Each tensor has its own generator seeded from (seed, key), so a tensor does not depend on the order
    of loading, the run dtype or the quantization scheme (the same seed gives different values on CPU and
    CUDA: their generators differ).
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]], init: Init, seed: int,
                 device: torch.device | str = "cpu") -> None:
        super().__init__([])
        self.shapes, self.init, self.seed, self.device = shapes, init, seed, torch.device(device)

    def keys(self) -> list[str]:
        return list(self.shapes)

    def __contains__(self, key: object) -> bool:
        return key in self.shapes

    def where(self, key: str) -> Path:
        return Path(f"<random seed {self.seed}>")

    def describe(self) -> str:
        return f"seeded random weights (seed {self.seed})"

    def meta(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:
        return self.shapes[key], torch.float32

    def get(self, key: str) -> torch.Tensor:
        shape = self.shapes[key]
        mean, std = self.init(key, shape)
        if std == 0:
            return torch.full(shape, mean, dtype=torch.float32, device=self.device)
        gen = torch.Generator(self.device).manual_seed((self.seed * 1_000_003 + zlib.crc32(key.encode())) % 2**63)
        t = torch.randn(shape, generator=gen, device=self.device, dtype=torch.float32).mul_(std)
        return t.add_(mean) if mean else t


def shapes_of(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of ``model`` (usually built on meta) with its shape."""
    return {k: tuple(t.shape) for k, t in model.state_dict().items()}
