"""The Wan2.1 video VAE (``Wan2.1_VAE.pth``): encode videos to normalised 16-channel latents and back.

Time is compressed 4x causally (1 + 4k frames <-> 1 + k latent frames), space 8x8. Both directions run
chunk by chunk (encode: frame 0, then 4 frames per chunk; decode: one latent frame per chunk) with a
``CausalCache``, exactly as the official code, so memory does not grow with the number of frames.
Module names equal the official checkpoint keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from lightx2v_quant.models.wan.vae_blocks import (
    AttentionBlock,
    CausalCache,
    CausalConv3d,
    Resample,
    ResidualBlock,
    RMSNorm,
)

# Per-channel statistics of the official latents: normalised = (mu - mean) / std.
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)


@dataclass(frozen=True)
class VaeConfig:
    """Architecture of a Wan2.1-style VAE: ``VaeConfig()`` is the official one, ``.tiny()`` for tests."""

    dim: int = 96  # base channel count
    z_dim: int = 16  # latent channels
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)  # per downsampling stage of the encoder
    latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN21_LATENTS_STD

    def __post_init__(self) -> None:
        object.__setattr__(self, "dim_mult", tuple(self.dim_mult))
        object.__setattr__(self, "temporal_downsample", tuple(bool(b) for b in self.temporal_downsample))
        object.__setattr__(self, "latents_mean", tuple(float(v) for v in self.latents_mean))
        object.__setattr__(self, "latents_std", tuple(float(v) for v in self.latents_std))
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(f"VaeConfig: temporal_downsample needs one flag per downsampling stage "
                             f"({len(self.dim_mult) - 1} for dim_mult={self.dim_mult}), "
                             f"got {self.temporal_downsample}")
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ValueError(f"VaeConfig: latents_mean / latents_std need z_dim={self.z_dim} values each, "
                             f"got {len(self.latents_mean)} / {len(self.latents_std)}")
        if any(s <= 0 for s in self.latents_std):
            raise ValueError("VaeConfig: latents_std values must be positive")
        if self.dim <= 0 or self.dim % 2 or self.num_res_blocks < 1:
            raise ValueError(f"VaeConfig: dim must be a positive even number and num_res_blocks >= 1 "
                             f"(got dim={self.dim}, num_res_blocks={self.num_res_blocks})")

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.temporal_downsample)

    @classmethod
    def tiny(cls) -> "VaeConfig":
        """Same structure and latent channels as the official VAE, base width 16: for tests."""
        return cls(dim=16)

    @classmethod
    def preset(cls, name: str) -> "VaeConfig":
        if name not in VAE_PRESETS:
            raise ValueError(f"unknown VAE preset {name!r}; choose one of {sorted(VAE_PRESETS)}")
        return VAE_PRESETS[name]


VAE_PRESETS: dict[str, VaeConfig] = {"wan2.1": VaeConfig(), "tiny": VaeConfig(dim=16)}


class Encoder(nn.Module):
    """video chunk [B,3,t,H,W] -> [B, 2*z_dim, t', H/8, W/8] (mean and log-variance halves)."""

    def __init__(self, cfg: VaeConfig) -> None:
        super().__init__()
        dims = [cfg.dim * m for m in (1, *cfg.dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResidualBlock(cin, cout))
                cin = cout
            if i < len(cfg.dim_mult) - 1:
                layers.append(Resample(cout, "down3d" if cfg.temporal_downsample[i] else "down2d"))
        self.downsamples = nn.ModuleList(layers)
        c = dims[-1]
        self.middle = nn.ModuleList([ResidualBlock(c, c), AttentionBlock(c), ResidualBlock(c, c)])
        self.head = nn.ModuleList([RMSNorm(c), nn.SiLU(), CausalConv3d(c, 2 * cfg.z_dim, 3, padding=1)])

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        for layer in (*self.downsamples, *self.middle):
            x = layer(x, cache)
        return self.head[2](self.head[1](self.head[0](x)), cache)


class Decoder(nn.Module):
    """latent chunk [B, z_dim, t, h, w] -> video [B, 3, t', 8h, 8w] (t' = 1 for the first chunk, else 4t)."""

    def __init__(self, cfg: VaeConfig) -> None:
        super().__init__()
        dims = [cfg.dim * m for m in (cfg.dim_mult[-1], *reversed(cfg.dim_mult))]
        temporal_upsample = tuple(reversed(cfg.temporal_downsample))
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = nn.ModuleList([ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]),
                                     ResidualBlock(dims[0], dims[0])])
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                cin //= 2  # the previous stage's upsampling conv halved the channels
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(ResidualBlock(cin, cout))
                cin = cout
            if i < len(cfg.dim_mult) - 1:
                layers.append(Resample(cout, "up3d" if temporal_upsample[i] else "up2d"))
        self.upsamples = nn.ModuleList(layers)
        c = dims[-1]
        self.head = nn.ModuleList([RMSNorm(c), nn.SiLU(), CausalConv3d(c, 3, 3, padding=1)])

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = self.conv1(x, cache)
        for layer in (*self.middle, *self.upsamples):
            x = layer(x, cache)
        return self.head[2](self.head[1](self.head[0](x)), cache)


class WanVAE(nn.Module):
    """Wan2.1 VAE. ``encode``: video in [-1, 1] -> normalised latents; ``decode``: the reverse.

    Weights may be fp32 (the official precision, default) or bf16/fp16. Each chunk is moved to the
    weights' device and dtype; outputs are float32 on the input's device (so a long video can stay in
    CPU memory while the VAE runs on the GPU). Inference only: no gradients, and the latent is the
    posterior mean (no sampling), as in the official pipeline.
    """

    def __init__(self, cfg: VaeConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or VaeConfig()
        self.encoder = Encoder(cfg)
        self.conv1 = CausalConv3d(2 * cfg.z_dim, 2 * cfg.z_dim, 1)  # -> (mu, log_var)
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)  # latent -> decoder input
        self.decoder = Decoder(cfg)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv2.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv2.weight.device

    def _stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # mean and 1/std as [1, z, 1, 1, 1] fp32; the official code multiplies / divides by 1/std
        mean = torch.tensor(self.cfg.latents_mean, dtype=torch.float32, device=device)
        inv_std = 1.0 / torch.tensor(self.cfg.latents_std, dtype=torch.float32, device=device)
        return mean.view(1, -1, 1, 1, 1), inv_std.view(1, -1, 1, 1, 1)

    def latent_shape(self, video_shape: tuple[int, ...]) -> tuple[int, int, int, int, int]:
        """[B, 3, T, H, W] -> [B, z_dim, 1 + (T-1)/4, H/8, W/8], checking that the shape is encodable."""
        if len(video_shape) != 5 or video_shape[1] != 3:
            raise ValueError(f"WanVAE.encode expects a video [B, 3, T, H, W], got shape {list(video_shape)}")
        b, _, t, h, w = video_shape
        tf, sf = self.cfg.temporal_factor, self.cfg.spatial_factor
        if t < 1 or (t - 1) % tf:
            lower, upper = 1 + (t - 1) // tf * tf, 1 + -(-(t - 1) // tf) * tf
            raise ValueError(f"WanVAE.encode needs 1 + {tf}k frames (1, 5, 9, ..., 81), got {t}; "
                             f"trim or pad the video to {lower} or {upper}")
        if h % sf or w % sf:
            raise ValueError(f"WanVAE.encode needs height and width divisible by {sf}, got {h}x{w}")
        return b, self.cfg.z_dim, 1 + (t - 1) // tf, h // sf, w // sf

    def iter_encode(self, video: torch.Tensor, cache: CausalCache | None = None) -> Iterator[torch.Tensor]:
        """Yield normalised latents [B, z_dim, 1, H/8, W/8] one latent frame at a time (frame 0 first,
        then one per 4 video frames). ``cache`` may be passed to inspect it; a fresh one by default."""
        self.latent_shape(tuple(video.shape))  # checked now, not at the first next()
        return self._encode_chunks(video, CausalCache() if cache is None else cache)

    @torch.no_grad()
    def _encode_chunks(self, video: torch.Tensor, cache: CausalCache) -> Iterator[torch.Tensor]:
        mean, inv_std = self._stats(self.device)
        tf = self.cfg.temporal_factor
        for start in range(0, video.shape[2], tf):
            # chunks: [0:1], [1:1+tf], [1+tf:1+2tf], ...
            chunk = video[:, :, : 1] if start == 0 else video[:, :, start - tf + 1 : start + 1]
            chunk = chunk.to(device=self.device, dtype=self.dtype)
            h = self.conv1(self.encoder(chunk, cache))  # conv1 is 1x1x1: per chunk is exact
            mu = h[:, : self.cfg.z_dim].float()
            yield ((mu - mean) * inv_std).to(video.device)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """video [B, 3, 1+4k, H, W] in [-1, 1] -> normalised latents [B, 16, 1+k, H/8, W/8] (float32)."""
        out = torch.empty(self.latent_shape(tuple(video.shape)), dtype=torch.float32, device=video.device)
        for i, z in enumerate(self.iter_encode(video)):
            out[:, :, i : i + 1] = z
        return out

    def _check_latents(self, latents: torch.Tensor) -> None:
        if latents.dim() != 5 or latents.shape[1] != self.cfg.z_dim:
            raise ValueError(f"WanVAE.decode expects latents [B, {self.cfg.z_dim}, T, h, w], "
                             f"got shape {list(latents.shape)}")

    def iter_decode(self, latents: torch.Tensor, cache: CausalCache | None = None) -> Iterator[torch.Tensor]:
        """Yield video chunks in [-1, 1] (float32): 1 frame for latent frame 0, then 4 per latent frame.
        Lets a caller write frames out as they come; ``cache`` may be passed to inspect it."""
        self._check_latents(latents)  # checked now, not at the first next()
        return self._decode_chunks(latents, CausalCache() if cache is None else cache)

    @torch.no_grad()
    def _decode_chunks(self, latents: torch.Tensor, cache: CausalCache) -> Iterator[torch.Tensor]:
        mean, inv_std = self._stats(self.device)
        for i in range(latents.shape[2]):
            z = latents[:, :, i : i + 1].to(device=self.device, dtype=torch.float32)
            z = z / inv_std + mean  # undo the normalisation
            x = self.decoder(self.conv2(z.to(self.dtype)), cache)  # conv2 is 1x1x1: per chunk is exact
            yield x.float().clamp_(-1.0, 1.0).to(latents.device)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """normalised latents [B, 16, 1+k, h, w] -> video [B, 3, 1+4k, 8h, 8w] in [-1, 1] (float32)."""
        self._check_latents(latents)
        b, _, t, h, w = latents.shape
        tf, sf = self.cfg.temporal_factor, self.cfg.spatial_factor
        out = torch.empty(b, 3, 1 + (t - 1) * tf, h * sf, w * sf, dtype=torch.float32, device=latents.device)
        pos = 0
        for x in self.iter_decode(latents):
            out[:, :, pos : pos + x.shape[2]] = x
            pos += x.shape[2]
        return out
