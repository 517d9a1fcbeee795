"""Wan-family models that load the official checkpoints: the DIT (and, from other modules, T5, CLIP, VAE)."""

from lightx2v_quant.models.wan.dit import HIGH_PRECISION, QUANTIZABLE, SENSITIVE_FP32, WanDiT
from lightx2v_quant.models.wan.dit_config import PRESETS as DIT_PRESETS
from lightx2v_quant.models.wan.dit_config import WanDiTConfig
from lightx2v_quant.models.wan.loading import build_dit, load_dit, random_dit

__all__ = [
    "DIT_PRESETS",
    "HIGH_PRECISION",
    "QUANTIZABLE",
    "SENSITIVE_FP32",
    "WanDiT",
    "WanDiTConfig",
    "build_dit",
    "load_dit",
    "random_dit",
]
