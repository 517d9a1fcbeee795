"""Building blocks of the Wan2.1 VAE: causal 3D convolution with a chunk-to-chunk cache, RMS norm,
residual and attention blocks, and the spatial / temporal resampling layers.

Every temporal operation is causal, so a video can be run a few frames at a time: each causal
convolution keeps the last frames of its input in a ``CausalCache`` and prepends them to the next
chunk. The cache holds a fixed number of frames per layer, so memory does not grow with video length.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn


class CausalCache:
    """State carried from one temporal chunk to the next, one entry per layer that needs it.

    Entries are keyed by the module itself, so layers need no global numbering. A fresh cache means
    "the video starts here".
    """

    def __init__(self) -> None:
        self._state: dict[nn.Module, Any] = {}

    def get(self, module: nn.Module) -> Any:
        return self._state.get(module)

    def put(self, module: nn.Module, value: Any) -> None:
        self._state[module] = value

    def tensors(self) -> Iterator[torch.Tensor]:
        return (v for v in self._state.values() if isinstance(v, torch.Tensor))

    def nbytes(self) -> int:
        """Bytes held by the cached frames (what chunked execution keeps between chunks)."""
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def __len__(self) -> int:
        return len(self._state)


class CausalConv3d(nn.Conv3d):
    """Conv3d that pads time only at the front (``2 * padding_t`` frames), space on both sides.

    With a cache, the frames remembered from the previous chunk stand in for (part of) the front
    zero padding, so running chunk by chunk gives the same result as running the whole video.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int, int],
                 stride: int | tuple[int, int, int] = 1, padding: int | tuple[int, int, int] = 0) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)
        pt, ph, pw = (padding,) * 3 if isinstance(padding, int) else padding
        self.front = 2 * pt  # zero frames in front when nothing is cached (the causal pad)
        self.space_pad = (pw, pw, ph, ph)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        front = self.front
        if cache is not None and front > 0:
            prev = cache.get(self)
            if prev is not None:
                x = torch.cat([prev, x], dim=2)
                front = max(front - prev.shape[2], 0)
            # remember the last frames this conv saw; clone so the whole chunk is not kept alive
            cache.put(self, x[:, :, -self.front:].clone())
        if front or any(self.space_pad):
            x = F.pad(x, (*self.space_pad, front, 0))
        return super().forward(x)


class RMSNorm(nn.Module):
    """``normalize(x, dim=1) * sqrt(C) * gamma`` over channels; gamma (C,1,1,1) video, (C,1,1) images."""

    def __init__(self, dim: int, images: bool = False) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, *((1, 1) if images else (1, 1, 1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the norm itself in fp32 when running in half precision (the sum of squares overflows / loses bits)
        y = F.normalize(x.float(), dim=1).to(x.dtype) if x.element_size() < 4 else F.normalize(x, dim=1)
        return y * self.scale * self.gamma


class ResidualBlock(nn.Module):
    """norm, SiLU, conv3, norm, SiLU, (dropout slot), conv3; plus a 1x1x1 shortcut if the channels change.

    The ``residual`` indices (0 norm, 2 conv, 3 norm, 6 conv) are those of the official checkpoint.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            RMSNorm(in_dim), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim), nn.SiLU(), nn.Identity(),  # index 5 is dropout in training; inference only here
            CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        h = self.shortcut(x)
        r = self.residual
        x = r[2](r[1](r[0](x)), cache)
        x = r[6](r[4](r[3](x)), cache)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame separately (so it needs no cache)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        qkv = self.to_qkv(self.norm(y))  # [bt, 3c, h, w]
        qkv = qkv.reshape(b * t, 1, 3 * c, h * w).transpose(2, 3)  # [bt, 1, hw, 3c]
        q, k, v = qkv.contiguous().chunk(3, dim=-1)
        y = F.scaled_dot_product_attention(q, k, v)  # [bt, 1, hw, c]
        y = y.squeeze(1).transpose(1, 2).reshape(b * t, c, h, w)
        y = self.proj(y)
        return x + y.view(b, t, c, h, w).permute(0, 2, 1, 3, 4)


RESAMPLE_MODES = ("down2d", "down3d", "up2d", "up3d")


class Resample(nn.Module):
    """Halve (down) or double (up) height and width; the ``3d`` modes also halve / double time.

    ``resample.1`` is the spatial conv (after a right/bottom zero pad for down, a nearest x2 upsample for
    up, which also halves the channels). ``time_conv`` is the temporal part:

    - down3d: stride-2 conv over [last frame of the previous chunk, this chunk]; the first chunk (the
      first video frame) passes through without it, so 1 + 4k frames become 1 + 2k.
    - up3d: a causal conv to 2C channels whose halves become the even / odd output frames; the first
      chunk (latent frame 0) skips it and stays one frame. The conv's own cache starts on the second
      chunk, so that chunk sees zero padding and not the first chunk's features (as the official code).
    """

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        if mode not in RESAMPLE_MODES:
            raise ValueError(f"Resample mode {mode!r} is not one of {RESAMPLE_MODES}")
        self.mode = mode
        if mode.startswith("down"):
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        else:
            self.resample = nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest-exact"),
                                          nn.Conv2d(dim, dim // 2, 3, padding=1))
        if mode == "down3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))
        elif mode == "up3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        if self.mode in ("down3d", "up3d") and cache is None:
            raise ValueError("temporal resampling runs chunk by chunk: pass a CausalCache")
        if self.mode == "up3d":
            x = self._up_time(x, cache)
        b, c, t, h, w = x.shape
        y = self.resample(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
        x = y.view(b, t, *y.shape[1:]).permute(0, 2, 1, 3, 4)
        if self.mode == "down3d":
            x = self._down_time(x, cache)
        return x

    def _up_time(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        if cache.get(self) is None:
            cache.put(self, True)  # first chunk seen: it stays a single frame
            return x
        b, c, t, h, w = x.shape
        y = self.time_conv(x, cache)  # [b, 2c, t, h, w]
        # channel halves -> frames 2i and 2i+1
        return y.view(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)

    def _down_time(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        prev = cache.get(self)
        cache.put(self, x[:, :, -1:].clone())
        if prev is None:
            return x  # first chunk: the first frame has no stride-2 partner
        return self.time_conv(torch.cat([prev, x], dim=2))
