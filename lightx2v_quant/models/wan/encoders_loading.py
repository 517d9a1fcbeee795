"""Build, load and randomly initialise the Wan text (umT5) and image (CLIP) encoders.

Models are built on the ``meta`` device directly in the run dtype, the quantizable linears are swapped
for ``QuantLinear`` shells when a scheme is given, and ``checkpoints.loader.load_into`` fills every tensor
strictly from the file (pre-quantized ``weight`` + ``weight_scale``, or a high-precision weight that is
quantized while loading). Random weights go through the same path from a seeded generator, so a random
model is built exactly like a loaded one and quantized and unquantized random models share their weights.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from torch import nn

from lightx2v_quant.checkpoints.loader import LoadReport, load_into
from lightx2v_quant.checkpoints.random_source import Init, RandomSource, shapes_of
from lightx2v_quant.checkpoints.reader import open_checkpoint
from lightx2v_quant.models.wan.clip import CLIP_QUANTIZABLE, CLIP_VIT_H14, ClipConfig, ClipVisionEncoder
from lightx2v_quant.models.wan.keymap_encoders import t5_key_from_hf
from lightx2v_quant.models.wan.t5 import T5_QUANTIZABLE, UMT5_XXL, T5Config, T5Encoder
from lightx2v_quant.quant.apply import quantize_model
from lightx2v_quant.quant.schemes import AUTO, NONE, Scheme

T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"

_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
           "fp32": torch.float32, "float32": torch.float32}


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of bf16, fp16, fp32") from None


def _quantize_shell(model: nn.Module, quant: Scheme | str | None, patterns: tuple[str, ...],
                    kernel: str | None, fast_accum: bool) -> None:
    if quant is None or quant == NONE:
        return
    if quant == AUTO:
        raise ValueError("quant='auto' must be resolved to a scheme first (lightx2v_quant.validate does this)")
    quantize_model(model, quant, patterns, kernel=kernel, empty=True, fast_accum=fast_accum)


# -- random weights (a TensorSource, loaded like a file) -----------------------------------------


def _t5_init(cfg: T5Config) -> Init:
    def init(key: str, shape: tuple[int, ...]) -> tuple[str, float]:
        if "norm" in key:
            return 1.0, 0.0
        if key.endswith("attn.q.weight"):
            # T5 does not scale q.k by 1/sqrt(d); the query init carries that factor (as T5's own init)
            return 0.0, (cfg.dim * cfg.head_dim) ** -0.5
        if key.startswith("token_embedding") or "pos_embedding" in key:
            return 0.0, 1.0
        return 0.0, shape[1] ** -0.5  # linear [out, in]
    return init


def _clip_init(cfg: ClipConfig) -> Init:
    def init(key: str, shape: tuple[int, ...]) -> tuple[str, float]:
        if "norm" in key:
            return (1.0 if key.endswith("weight") else 0.0), 0.0
        if key == "visual.patch_embedding.weight":
            return 0.0, (3 * cfg.patch_size**2) ** -0.5
        if key in ("visual.cls_embedding", "visual.pos_embedding", "visual.head"):
            return 0.0, cfg.width**-0.5
        if key.endswith(".bias"):
            return 0.0, 0.02
        return 0.0, shape[1] ** -0.5  # linear [out, in]
    return init


def _finish(model: nn.Module, report: LoadReport) -> None:
    model.eval().requires_grad_(False)
    model.load_report = report  # what was read, pre-quantized or quantized online (for run reports)


# -- T5 -------------------------------------------------------------------------------------------
def build_t5(cfg: T5Config = UMT5_XXL, dtype: torch.dtype | str = torch.bfloat16, quant: Scheme | str | None = None,
             kernel: str | None = None, fast_accum: bool = False) -> T5Encoder:
    """An empty T5Encoder on ``meta`` in ``dtype``, with QuantLinear shells if ``quant`` names a scheme."""
    with torch.device("meta"):
        model = T5Encoder(cfg).to(as_dtype(dtype))
    _quantize_shell(model, quant, T5_QUANTIZABLE, kernel, fast_accum)
    return model


T5_LAYOUTS = ("official", "transformers")


def load_t5(path: str | Path, cfg: T5Config = UMT5_XXL, dtype: torch.dtype | str = torch.bfloat16,
            device: torch.device | str = "cpu", quant: Scheme | str | None = None, kernel: str | None = None, *,
            layout: str = "official", fast_accum: bool = False, progress: bool = False) -> T5Encoder:
    """Load ``models_t5_umt5-xxl-enc-bf16.pth`` or a LightX2V quantized T5 .pth (``layout="official"``),
    or a transformers ``UMT5EncoderModel`` file such as diffusers' ``text_encoder/`` (``"transformers"``)."""
    if layout not in T5_LAYOUTS:
        raise ValueError(f"unknown T5 checkpoint layout {layout!r}; use one of {', '.join(T5_LAYOUTS)}")
    key_map = partial(t5_key_from_hf, strict=False) if layout == "transformers" else None
    model = build_t5(cfg, dtype, quant, kernel, fast_accum)
    report = load_into(model, open_checkpoint(path), device=device, key_map=key_map, what="T5", progress=progress)
    _finish(model, report)
    return model


def random_t5(cfg: T5Config, dtype: torch.dtype | str = torch.bfloat16, device: torch.device | str = "cpu",
              seed: int = 0, quant: Scheme | str | None = None, kernel: str | None = None,
              fast_accum: bool = False) -> T5Encoder:
    """A T5Encoder with seeded random weights (tests, benchmarks, the tiny pipeline)."""
    source = RandomSource(shapes_of(build_t5(cfg, dtype)), _t5_init(cfg), seed, device)
    model = build_t5(cfg, dtype, quant, kernel, fast_accum)
    _finish(model, load_into(model, source, device=device, what="T5"))
    return model


# -- CLIP -----------------------------------------------------------------------------------------
def clip_key_map(key: str) -> str | None:
    """File key -> model key for the open-clip file: the text tower (``textual.*``) and the logit scale
    (``log_scale``) are not part of the image encoder and are dropped, as LightX2V does; every other
    key, ``visual.post_norm`` and ``visual.head`` included, must match the model."""
    if key.startswith("textual.") or key == "log_scale":
        return None
    return key


def build_clip(cfg: ClipConfig = CLIP_VIT_H14, dtype: torch.dtype | str = torch.float16,
               quant: Scheme | str | None = None, kernel: str | None = None,
               fast_accum: bool = False) -> ClipVisionEncoder:
    """An empty ClipVisionEncoder on ``meta`` in ``dtype`` (fp16 = the official clip_dtype)."""
    with torch.device("meta"):
        model = ClipVisionEncoder(cfg).to(as_dtype(dtype))
    _quantize_shell(model, quant, CLIP_QUANTIZABLE, kernel, fast_accum)
    return model


def load_clip(path: str | Path, cfg: ClipConfig = CLIP_VIT_H14, dtype: torch.dtype | str = torch.float16,
              device: torch.device | str = "cpu", quant: Scheme | str | None = None, kernel: str | None = None,
              *, fast_accum: bool = False, progress: bool = False) -> ClipVisionEncoder:
    """Load ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`` (or LightX2V's quantized CLIP)."""
    model = build_clip(cfg, dtype, quant, kernel, fast_accum)
    report = load_into(model, open_checkpoint(path), device=device, key_map=clip_key_map, what="CLIP",
                       progress=progress)
    _finish(model, report)
    return model


def random_clip(cfg: ClipConfig, dtype: torch.dtype | str = torch.float16, device: torch.device | str = "cpu",
                seed: int = 0, quant: Scheme | str | None = None, kernel: str | None = None,
                fast_accum: bool = False) -> ClipVisionEncoder:
    """A ClipVisionEncoder with seeded random weights."""
    source = RandomSource(shapes_of(build_clip(cfg, dtype)), _clip_init(cfg), seed, device)
    model = build_clip(cfg, dtype, quant, kernel, fast_accum)
    _finish(model, load_into(model, source, device=device, what="CLIP"))
    return model
