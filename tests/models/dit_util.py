"""Shared pieces of the DIT tests: tiny configs, a diffusers reference with randomised weights, inputs."""

from __future__ import annotations

import torch

from lightx2v_quant.models.wan import WanDiTConfig

LATENT = (3, 4, 6)  # F, H, W of the test latents -> 3 x 2 x 3 = 18 tokens


def tiny(i2v: bool = False, **changes) -> WanDiTConfig:
    return WanDiTConfig.preset("tiny-i2v" if i2v else "tiny-t2v").replace(**changes)


def diffusers_reference(cfg: WanDiTConfig, seed: int = 1):
    """diffusers ``WanTransformer3DModel`` of the same architecture, every parameter randomised (norm
    weights and biases too, so a swapped or skipped norm shows up)."""
    from diffusers import WanTransformer3DModel

    ref = WanTransformer3DModel(
        patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_dim, out_channels=cfg.out_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, eps=cfg.eps, image_dim=cfg.image_dim,
        added_kv_proj_dim=cfg.dim if cfg.image_dim is not None else None,
    ).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif p.ndim == 1:
                p.copy_(1 + 0.1 * noise)
            elif "scale_shift_table" in name:
                p.copy_(noise / p.shape[-1] ** 0.5)
            else:
                p.copy_(noise / p[0].numel() ** 0.5)
    return ref


def inputs(
    cfg: WanDiTConfig, batch: int = 2, latent=LATENT, seed: int = 0, ctx_len: int | None = None
) -> dict:
    """Random DIT inputs; I2V configs get ``y`` (in_dim - 16 channels) and 257 CLIP tokens."""
    g = torch.Generator().manual_seed(seed)
    out = {
        "x": torch.randn(batch, 16, *latent, generator=g),
        "t": torch.tensor([999.0, 371.0, 5.0, 640.0][:batch]),
        "context": torch.randn(batch, ctx_len or cfg.text_len, cfg.text_dim, generator=g),
    }
    if cfg.in_dim > 16:
        out["y"] = torch.randn(batch, cfg.in_dim - 16, *latent, generator=g)
    if cfg.image_dim is not None:
        out["clip_fea"] = torch.randn(batch, 257, cfg.image_dim, generator=g)
    return out


def sqnr_db(ref: torch.Tensor, x: torch.Tensor) -> float:
    ref, x = ref.double(), x.double()
    return float(10 * torch.log10(ref.pow(2).mean() / (ref - x).pow(2).mean().clamp_min(1e-300)))


def rel_err(ref: torch.Tensor, x: torch.Tensor) -> float:
    return float((ref.double() - x.double()).norm() / ref.double().norm())
