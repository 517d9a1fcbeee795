"""CLIP ViT-H/14 image tower of open-clip xlm-roberta-large-vit-huge-14, as Wan2.1 I2V uses it.

Computes what the official ``wan/modules/clip.py`` does for ``CLIPModel.visual``: resize the [-1, 1]
image to 224 (bicubic, no antialias, no crop), CLIP-normalise, patchify, CLS + positions, pre-norm, then
all blocks but the last (penultimate features, no post-norm / head) -> [B, 257, 1280]. Module names equal
the ``visual.*`` keys of ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

# Quantizable linears (fnmatch patterns for quant.apply.quantize_model); the patch conv, embeddings,
# norms and head stay in the run dtype.
CLIP_QUANTIZABLE: tuple[str, ...] = (
    "visual.transformer.*.attn.to_qkv",
    "visual.transformer.*.attn.proj",
    "visual.transformer.*.mlp.0",
    "visual.transformer.*.mlp.2",
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipConfig:
    """Vision tower architecture. Defaults: ViT-H/14 of the Wan2.1 I2V CLIP."""

    image_size: int = 224
    patch_size: int = 14
    width: int = 1280
    num_layers: int = 32  # the features come from the first num_layers - 1 blocks
    num_heads: int = 16
    mlp_dim: int = 5120
    out_dim: int = 1024  # width of `visual.head` (the CLIP embedding; unused by Wan)
    eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.width % self.num_heads:
            raise ValueError(f"ClipConfig: width {self.width} is not a multiple of num_heads {self.num_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"ClipConfig: image_size {self.image_size} is not a multiple of patch_size")
        if self.num_layers < 2:
            raise ValueError("ClipConfig: num_layers must be >= 2 (the output skips the last block)")

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1  # patches + CLS

    def linear_shapes(self) -> set[tuple[int, int]]:
        """(out_features, in_features) of the quantizable linears (for launch-time kernel checks)."""
        w, m = self.width, self.mlp_dim
        return {(3 * w, w), (w, w), (m, w), (w, m)}

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ClipConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown CLIP architecture key(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(values))

    @classmethod
    def preset(cls, name: str) -> ClipConfig:
        try:
            return CLIP_PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown CLIP preset {name!r}; presets: {', '.join(CLIP_PRESETS)}") from None


CLIP_VIT_H14 = ClipConfig()
CLIP_TINY = ClipConfig(image_size=56, patch_size=14, width=128, num_layers=3, num_heads=2, mlp_dim=512, out_dim=64)
CLIP_PRESETS: dict[str, ClipConfig] = {"vit-h-14": CLIP_VIT_H14, "tiny": CLIP_TINY}


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the weight / input dtype; output in the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type_as(x)


class ClipAttention(nn.Module):
    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.to_qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, c = x.shape
        h = self.num_heads
        # fused projection laid out as [q | k | v], each head-major: view(b, s, 3, heads, head_dim)
        q, k, v = self.to_qkv(x).view(b, s, 3, h, c // h).permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, S, D]
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(D)) v
        return self.proj(out.transpose(1, 2).reshape(b, s, c))


class ClipBlock(nn.Module):
    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        self.norm1 = LayerNorm32(cfg.width, eps=cfg.eps)
        self.attn = ClipAttention(cfg.width, cfg.num_heads)
        self.norm2 = LayerNorm32(cfg.width, eps=cfg.eps)
        # exact (erf) GELU: open-clip's xlm-roberta ViT-H uses activation="gelu", not QuickGELU
        self.mlp = nn.Sequential(nn.Linear(cfg.width, cfg.mlp_dim), nn.GELU(), nn.Linear(cfg.mlp_dim, cfg.width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """The ``visual`` module: normalised pixels [B, 3, S, S] -> token features [B, tokens, width]."""

    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        # pre_norm=True in open-clip means the patch conv has no bias
        self.patch_embedding = nn.Conv2d(3, w, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.cls_embedding = nn.Parameter(torch.zeros(1, 1, w))
        self.pos_embedding = nn.Parameter(torch.zeros(1, cfg.num_tokens, w))
        self.pre_norm = LayerNorm32(w, eps=cfg.eps)
        self.transformer = nn.Sequential(*(ClipBlock(cfg) for _ in range(cfg.num_layers)))
        # Only image_embeds() uses these two; they are in the official file and are loaded strictly.
        self.post_norm = LayerNorm32(w, eps=cfg.eps)
        self.head = nn.Parameter(torch.zeros(w, cfg.out_dim))

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype))
        x = x.flatten(2).transpose(1, 2)  # [B, patches, W], patches in row-major order
        x = torch.cat([self.cls_embedding.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        return self.pre_norm(x + self.pos_embedding.to(x.dtype))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Features after all blocks but the last (Wan's ``use_31_block=True``)."""
        return self.transformer[:-1](self._embed(pixels))

    def image_embeds(self, pixels: torch.Tensor) -> torch.Tensor:
        """The CLIP image embedding [B, out_dim]: all blocks, post_norm on CLS, projection by ``head``."""
        x = self.transformer(self._embed(pixels))
        return self.post_norm(x[:, 0]) @ self.head.to(x.dtype)


ImageInput = Union[torch.Tensor, "PIL.Image.Image"]  # noqa: F821 (PIL is optional)


def pil_to_tensor(image: Any) -> torch.Tensor:
    """PIL image -> [3, H, W] float32 in [-1, 1] (the official I2V input: to_tensor, then (x - 0.5) / 0.5)."""
    import numpy as np

    arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(255.0)
    return x.sub(0.5).div(0.5)


def preprocess(images: ImageInput | Sequence[ImageInput], image_size: int = 224,
               device: torch.device | str | None = None) -> torch.Tensor:
    """Images in [-1, 1] ([3, H, W], [3, 1, H, W] or PIL) -> CLIP pixels [N, 3, S, S] float32.

    Official steps: bicubic resize of the whole image to S x S (align_corners=False, no antialias, no
    crop), x * 0.5 + 0.5, then (x - mean) / std per channel.
    """
    if isinstance(images, torch.Tensor) or not isinstance(images, Sequence):
        images = [images]
    batch = []
    for i, img in enumerate(images):
        x = img if isinstance(img, torch.Tensor) else pil_to_tensor(img)
        if x.ndim == 4 and x.shape[1] == 1:
            x = x[:, 0]  # [3, 1, H, W] video-shaped image, as the official I2V passes it
        if x.ndim != 3 or x.shape[0] != 3:
            raise ValueError(f"image {i} has shape {list(x.shape)}; expected [3, H, W] or [3, 1, H, W] in [-1, 1]")
        x = x.to(device=device if device is not None else x.device, dtype=torch.float32)
        x = F.interpolate(x[None], size=(image_size, image_size), mode="bicubic", align_corners=False)
        batch.append(x)
    x = torch.cat(batch).mul(0.5).add(0.5)
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class ClipVisionEncoder(nn.Module):
    """``ClipVisionEncoder(cfg).encode(images) -> [N, tokens, width]`` (257 x 1280 for ViT-H/14).

    ``forward`` takes already preprocessed pixels; ``encode`` runs the official preprocessing first.
    Weights are usually fp16 (the official ``clip_dtype``); LayerNorms compute in fp32.
    """

    def __init__(self, cfg: ClipConfig = CLIP_VIT_H14) -> None:
        super().__init__()
        self.cfg = cfg
        self.visual = VisionTransformer(cfg)

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.visual.patch_embedding.weight.device

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual(pixels)

    @torch.no_grad()
    def encode(self, images: ImageInput | Sequence[ImageInput]) -> torch.Tensor:
        return self.visual(preprocess(images, self.cfg.image_size, self.device))
