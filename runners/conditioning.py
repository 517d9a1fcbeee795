"""Image-to-video conditioning as the official Wan I2V code builds it: the frame size from the image's
aspect ratio, the VAE-encoded first frame followed by black frames, and the first-frame mask."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

VAE_STRIDE, PATCH = 8, 2


def load_image(path: str | Path) -> Any:
    """The input image as an RGB PIL image (one clear error when it is missing or unreadable)."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image={path}: no such file")
    try:
        return Image.open(p).convert("RGB")
    except UnidentifiedImageError:
        raise ValueError(f"image={path}: not an image PIL can read") from None


def synthetic_image(height: int, width: int, seed: int) -> Any:
    """A seeded smooth colour image, for random-weight benchmark runs of image-to-video models."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    phase = torch.rand(3, generator=g) * 2 * math.pi
    rgb = torch.stack([0.5 + 0.5 * torch.sin(3 * xx + 2 * yy + p) for p in phase], dim=-1)
    return Image.fromarray((rgb * 255).round().to(torch.uint8).numpy())


def image_to_tensor(image: Any) -> torch.Tensor:
    """PIL RGB -> [3, H, W] float32 in [-1, 1] (to_tensor, then (x - 0.5) / 0.5)."""
    arr = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(255.0).sub(0.5).div(0.5)


def i2v_latent_size(image_hw: tuple[int, int], max_area: int) -> tuple[int, int]:
    """Official rule: keep the image's aspect ratio within ``max_area`` pixels, latent sides even
    (so the pixel sides are multiples of 16)."""
    h, w = image_hw
    aspect = h / w
    lat_h = round(np.sqrt(max_area * aspect) // VAE_STRIDE // PATCH * PATCH)
    lat_w = round(np.sqrt(max_area / aspect) // VAE_STRIDE // PATCH * PATCH)
    if lat_h < PATCH or lat_w < PATCH:
        raise ValueError(f"an image of {w}x{h} in {max_area} pixels leaves a side under 16 pixels")
    return int(lat_h), int(lat_w)


def first_frame_mask(frames: int, lat_h: int, lat_w: int) -> torch.Tensor:
    """[4, latent frames, lat_h, lat_w]: ones where the conditioning frame is known (the first frame,
    repeated 4x so that the first latent frame is all ones), zeros elsewhere."""
    msk = torch.zeros(frames + 3, lat_h, lat_w)
    msk[:4] = 1.0
    return msk.view((frames + 3) // 4, 4, lat_h, lat_w).transpose(0, 1).contiguous()


@torch.no_grad()
def vae_condition(vae: Any, image: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
    """y [20, latent frames, H/8, W/8] = cat(mask [4], VAE latents [16] of (resized image, black frames))."""
    device = vae.device if hasattr(vae, "device") else next(vae.parameters()).device
    first = F.interpolate(image[None].float(), size=(height, width), mode="bicubic", align_corners=False)
    video = torch.cat([first.transpose(0, 1)[:, :1], torch.zeros(3, frames - 1, height, width)], dim=1)
    latents = vae.encode(video[None].to(device, torch.float32))[0].float()
    mask = first_frame_mask(frames, height // VAE_STRIDE, width // VAE_STRIDE).to(latents.device)
    return torch.cat([mask, latents], dim=0)
