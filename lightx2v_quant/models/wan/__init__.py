"""Wan2.1 / Wan2.2 models: DIT, text and image encoders, VAE (library API, no Hydra needed)."""

from lightx2v_quant.models.wan.vae import VaeConfig, WanVAE
from lightx2v_quant.models.wan.vae_load import build_vae, load_vae, random_vae
