"""Wan2.1 / Wan2.2 models that load the official checkpoints: DIT, umT5 text encoder, CLIP image
encoder, VAE (library API, no Hydra needed)."""

# DIT
from lightx2v_quant.models.wan.dit import HIGH_PRECISION, QUANTIZABLE, SENSITIVE_FP32, WanDiT
from lightx2v_quant.models.wan.dit_config import PRESETS as DIT_PRESETS
from lightx2v_quant.models.wan.dit_config import WanDiTConfig
from lightx2v_quant.models.wan.loading import build_dit, load_dit, random_dit

# Encoders (umT5-XXL text encoder, CLIP ViT-H/14 image encoder) and their tokenizers
from lightx2v_quant.models.wan.clip import (
    CLIP_QUANTIZABLE,
    CLIP_TINY,
    CLIP_VIT_H14,
    ClipConfig,
    ClipVisionEncoder,
    preprocess as clip_preprocess,
)
from lightx2v_quant.models.wan.encoders_loading import (
    build_clip,
    build_t5,
    load_clip,
    load_t5,
    random_clip,
    random_t5,
)
from lightx2v_quant.models.wan.t5 import T5_QUANTIZABLE, T5_TINY, UMT5_XXL, T5Config, T5Encoder
from lightx2v_quant.models.wan.text_encoder import TextEncoder, pad_context
from lightx2v_quant.models.wan.tokenizer import ByteTokenizer, TokenizerError, Tokens, UMT5Tokenizer

# VAE
from lightx2v_quant.models.wan.vae import VaeConfig, WanVAE
from lightx2v_quant.models.wan.vae_load import build_vae, load_vae, random_vae
