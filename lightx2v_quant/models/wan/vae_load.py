"""Building and loading the Wan2.1 VAE: official ``Wan2.1_VAE.pth`` (or diffusers' layout), seeded random
weights, and the key map between the official names and diffusers' ``AutoencoderKLWan``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from lightx2v_quant.checkpoints.loader import load_into
from lightx2v_quant.checkpoints.reader import CheckpointError, TensorSource, open_checkpoint
from lightx2v_quant.models.wan.vae import VaeConfig, WanVAE
from lightx2v_quant.models.wan.vae_blocks import RMSNorm

LAYOUTS = ("auto", "official", "diffusers")


def build_vae(cfg: VaeConfig | None = None, *, dtype: torch.dtype = torch.float32) -> WanVAE:
    """The model skeleton on the ``meta`` device (no memory), in ``dtype``, ready for ``load_into``."""
    with torch.device("meta"):
        model = WanVAE(cfg or VaeConfig()).to(dtype)
    return model.eval().requires_grad_(False)


def load_vae(
    path: str | Path,
    cfg: VaeConfig | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    layout: str = "auto",
    progress: bool = False,
) -> WanVAE:
    """Load a VAE checkpoint (``Wan2.1_VAE.pth``, or diffusers' ``vae/diffusion_pytorch_model.safetensors``).

    Strict: a missing, unexpected or wrongly shaped tensor raises ``CheckpointError`` naming it and the file.
    ``layout`` "auto" tells the two key layouts apart by their first conv's name.
    """
    cfg = cfg or VaeConfig()
    source = open_checkpoint(path)
    key_map = _key_map_for(source, cfg, layout)
    model = build_vae(cfg, dtype=dtype)
    load_into(model, source, device=device, key_map=key_map, what="Wan VAE", progress=progress)
    return model


def random_vae(
    cfg: VaeConfig | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> WanVAE:
    """A VAE with seeded random weights (same values on every device): for tests and dry runs.

    Convolutions get PyTorch's default uniform(+-1/sqrt(fan_in)) weights and biases, norm gammas
    uniform(0.5, 1.5) (not 1, so that a swapped norm shows up in parity tests).
    """
    model = build_vae(cfg, dtype=dtype).to_empty(device=device)
    gen = torch.Generator().manual_seed(seed)  # drawn on the CPU in fp32, then copied: device independent
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d)):
                bound = 1.0 / (module.weight[0].numel() ** 0.5)  # fan_in = in_channels * kernel volume
                for p in (module.weight, module.bias):
                    if p is not None:
                        p.copy_(torch.rand(p.shape, generator=gen) * 2 * bound - bound)
            elif isinstance(module, RMSNorm):
                module.gamma.copy_(torch.rand(module.gamma.shape, generator=gen) + 0.5)
    return model


# ---- official <-> diffusers key names ------------------------------------------------------------

_BLOCK_RENAMES = (  # inside residual blocks: official Sequential indices -> diffusers names
    (".residual.0.", ".norm1."), (".residual.2.", ".conv1."), (".residual.3.", ".norm2."),
    (".residual.6.", ".conv2."), (".shortcut.", ".conv_shortcut."),
)
_PREFIX_RENAMES = (
    ("conv1.", "quant_conv."), ("conv2.", "post_quant_conv."),
    ("encoder.conv1.", "encoder.conv_in."), ("decoder.conv1.", "decoder.conv_in."),
    ("encoder.head.0.", "encoder.norm_out."), ("encoder.head.2.", "encoder.conv_out."),
    ("decoder.head.0.", "decoder.norm_out."), ("decoder.head.2.", "decoder.conv_out."),
    ("encoder.middle.0.", "encoder.mid_block.resnets.0."),
    ("encoder.middle.1.", "encoder.mid_block.attentions.0."),
    ("encoder.middle.2.", "encoder.mid_block.resnets.1."),
    ("decoder.middle.0.", "decoder.mid_block.resnets.0."),
    ("decoder.middle.1.", "decoder.mid_block.attentions.0."),
    ("decoder.middle.2.", "decoder.mid_block.resnets.1."),
    ("encoder.downsamples.", "encoder.down_blocks."),  # same indices
)


def _decoder_stage_names(cfg: VaeConfig) -> list[str]:
    """diffusers' name of each official ``decoder.upsamples.<i>``: stages of res blocks (+ one upsampler)."""
    names = []
    stages = len(cfg.dim_mult)
    for s in range(stages):
        names += [f"decoder.up_blocks.{s}.resnets.{r}." for r in range(cfg.num_res_blocks + 1)]
        if s < stages - 1:
            names.append(f"decoder.up_blocks.{s}.upsamplers.0.")
    return names


def official_to_diffusers_key(key: str, cfg: VaeConfig | None = None) -> str:
    """The diffusers ``AutoencoderKLWan`` name of an official VAE key."""
    cfg = cfg or VaeConfig()
    out = key
    if key.startswith("decoder.upsamples."):
        index, _, rest = key[len("decoder.upsamples."):].partition(".")
        names = _decoder_stage_names(cfg)
        if not index.isdigit() or int(index) >= len(names):
            raise KeyError(f"{key!r} is not a key of a Wan VAE with {cfg}")
        out = names[int(index)] + rest
    else:
        for old, new in _PREFIX_RENAMES:
            if key.startswith(old):
                out = new + key[len(old):]
                break
    for old, new in _BLOCK_RENAMES:
        out = out.replace(old, new)
    return out


def diffusers_key_map(cfg: VaeConfig | None = None) -> dict[str, str]:
    """{official key: diffusers key} for every tensor of the model with ``cfg`` (a bijection)."""
    cfg = cfg or VaeConfig()
    return {k: official_to_diffusers_key(k, cfg) for k in build_vae(cfg).state_dict()}


def official_to_diffusers(state_dict: dict[str, torch.Tensor], cfg: VaeConfig | None = None
                          ) -> dict[str, torch.Tensor]:
    """A state dict with official names -> the same tensors under diffusers' names."""
    return {official_to_diffusers_key(k, cfg): v for k, v in state_dict.items()}


def diffusers_to_official(state_dict: dict[str, torch.Tensor], cfg: VaeConfig | None = None
                          ) -> dict[str, torch.Tensor]:
    """A diffusers ``AutoencoderKLWan`` state dict -> official names; unknown keys raise KeyError."""
    back = {d: o for o, d in diffusers_key_map(cfg).items()}
    unknown = sorted(k for k in state_dict if k not in back)
    if unknown:
        raise KeyError(f"not keys of a diffusers Wan2.1 VAE with {cfg or VaeConfig()}: {unknown[:12]}")
    return {back[k]: v for k, v in state_dict.items()}


def _key_map_for(source: TensorSource, cfg: VaeConfig, layout: str) -> Callable[[str], str | None] | None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "auto":
        if "encoder.conv1.weight" in source:
            layout = "official"
        elif "encoder.conv_in.weight" in source:
            layout = "diffusers"
        else:
            raise CheckpointError(
                f"{source.describe()} is not a Wan VAE checkpoint: it has neither encoder.conv1.weight "
                f"(official Wan2.1_VAE.pth) nor encoder.conv_in.weight (diffusers' vae/ folder); "
                f"is it the right file?")
    if layout == "official":
        return None
    back = {d: o for o, d in diffusers_key_map(cfg).items()}
    return lambda k: back.get(k, k)  # unknown keys pass through and are reported as unexpected
