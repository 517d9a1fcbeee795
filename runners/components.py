"""Build the pipeline's components, each with its own quantization scheme and kernel from the plan:
text encoder (umT5 + tokenizer), image encoder (CLIP), DIT (one, or two Wan2.2 experts) and VAE.

Weights come from checkpoints found by ``lightx2v_quant.checkpoints.discovery`` (``<component>_quant.ckpt``,
or ``model.path`` searched in LightX2V's layout: pre-quantized files of the scheme's format first, then
the originals, quantized while loading) or, with ``model.path=null``, are seeded random tensors. Each builder
returns the module and a dict for the report: what runs, its bytes, and where the weights came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightx2v_quant.quant.apply import kernels_used, prepare_model, weight_bytes
from lightx2v_quant.validate import ComponentPlan

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Offsets of each component's random-weight seed from model.random_seed: components differ, runs agree.
SEED_OFFSETS = {"dit": 0, "dit.high_noise": 0, "dit.low_noise": 1, "t5": 10, "clip": 20, "vae": 30}
VAE_FILE = "Wan2.1_VAE.pth"


def run_dtype(cfg: Any) -> torch.dtype:
    name = str(cfg.model.dtype)
    if name not in DTYPES:
        raise ValueError(f"model.dtype={name}: expected one of {', '.join(DTYPES)}")
    return DTYPES[name]


def _quant_args(plan: ComponentPlan | None, cfg: Any) -> dict[str, Any]:
    """quant/kernel arguments of the model builders: the scheme, the kernel that will actually run, and
    quant.fast_accum (fp8 torch._scaled_mm), which applies to every component."""
    if plan is None or plan.scheme is None:
        return {"quant": None, "kernel": None}
    return {"quant": plan.scheme.name, "kernel": plan.kernel, "fast_accum": bool(cfg.quant.fast_accum)}


def _finish(
    module: nn.Module,
    plan: ComponentPlan | None,
    source: str,
    dtype: torch.dtype,
    device: torch.device,
    prepare: bool = True,
) -> dict[str, Any]:
    """Prepare the quantized layers for their device and describe the component for the report.
    (Offloaded DITs are prepared by the offload manager on the compute device instead.)"""
    if prepare:
        prepare_model(module)
    used = kernels_used(module)
    info: dict[str, Any] = {
        "requested": plan.requested if plan else "none",
        "scheme": plan.scheme.name if plan and plan.scheme else None,
        "format": plan.scheme.format if plan and plan.scheme else None,
        "kernel": plan.kernel if plan and plan.scheme else None,
        "runs": plan.label if plan else "none (unquantized)",
        "note": plan.note if plan else "",
        "kernels_used": used,
        "quantized_layers": sum(used.values()),
        "weight_bytes": weight_bytes(module),
        "dtype": str(dtype).removeprefix("torch."),
        "device": str(device),
        "weights": source,
    }
    report = getattr(module, "load_report", None)
    if report is not None and getattr(report, "quantized_online", None) is not None:
        info["prequantized_layers"] = len(report.prequantized)
        info["quantized_online_layers"] = len(report.quantized_online)
    return info


def _locate(
    cfg: Any, component: str, plan: ComponentPlan | None, expert: str | None = None
) -> tuple[Any, str]:
    """(path or list of shards, description) of a component's checkpoint: ``<component>_quant.ckpt`` when
    given, else found in ``model.path`` in LightX2V's folder order, pre-quantized for the plan's format
    first, then the original (quantized while loading)."""
    from lightx2v_quant.checkpoints.discovery import find_checkpoint

    scheme = plan.scheme if plan is not None else None
    found = find_checkpoint(
        component,
        cfg.model.path,
        scheme.format if scheme else None,
        cfg[f"{component}_quant"].ckpt,
        expert=expert,
        scheme=scheme.name if scheme else None,
    )
    paths = list(found.paths)
    return (paths if len(paths) > 1 else paths[0]), found.describe()


# -- text encoder -------------------------------------------------------------------------------------
def build_text_encoder(cfg: Any, plan: ComponentPlan | None, device: torch.device, random: bool):
    from lightx2v_quant.models.wan import (
        ByteTokenizer,
        T5Config,
        TextEncoder,
        UMT5Tokenizer,
        load_t5,
        random_t5,
    )

    t5_cfg = T5Config.from_mapping(cfg.model.t5)
    dtype = run_dtype(cfg)
    if random:
        seed = int(cfg.model.random_seed) + SEED_OFFSETS["t5"]
        model = random_t5(t5_cfg, dtype, device, seed=seed, **_quant_args(plan, cfg))
        source = f"random (seed {seed})"
    else:
        path, source = _locate(cfg, "t5", plan)
        model = load_t5(path, t5_cfg, dtype, device, **_quant_args(plan, cfg), progress=True)
    # The umT5 tokenizer lives in the model folder; tiny models, and random weights without a folder,
    # use the byte-level tokenizer (no download).
    if str(cfg.model.tokenizer) == "byte" or cfg.model.path is None:
        tokenizer, source = ByteTokenizer(), source + ", byte-level tokenizer"
    else:
        tokenizer = UMT5Tokenizer.from_model_folder(cfg.model.path)
        source += ", umT5 tokenizer from model.path/google/umt5-xxl"
    info = _finish(model, plan, source, dtype, device)
    return TextEncoder(model, tokenizer), info


# -- image encoder (Wan2.1 I2V) -----------------------------------------------------------------------
def build_image_encoder(cfg: Any, plan: ComponentPlan | None, device: torch.device, random: bool):
    from lightx2v_quant.models.wan import ClipConfig, load_clip, random_clip

    clip_cfg = ClipConfig.from_mapping(cfg.model.clip)
    # The official CLIP runs in fp16; bf16 on the CPU, where fp16 matmuls are slow or missing.
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    if random:
        seed = int(cfg.model.random_seed) + SEED_OFFSETS["clip"]
        model = random_clip(clip_cfg, dtype, device, seed=seed, **_quant_args(plan, cfg))
        source = f"random (seed {seed})"
    else:
        path, source = _locate(cfg, "clip", plan)
        model = load_clip(path, clip_cfg, dtype, device, **_quant_args(plan, cfg), progress=True)
    return model, _finish(model, plan, source, dtype, device)


# -- DIT ----------------------------------------------------------------------------------------------
def build_dit(
    cfg: Any,
    plan: ComponentPlan | None,
    device: torch.device,
    random: bool,
    expert: str | None = None,
    prepare: bool = True,
    compute_device: torch.device | None = None,
):
    """The DIT, or one Wan2.2 expert (``expert`` = "high_noise" | "low_noise"), on ``device``."""
    from lightx2v_quant.models.wan import WanDiTConfig, load_dit, random_dit
    from lightx2v_quant.models.wan import build_dit as build_dit_shell

    dit_cfg = WanDiTConfig.from_dict(dict(cfg.model.dit))
    dtype = run_dtype(cfg)
    common = dict(
        sensitive_fp32=bool(cfg.model.sensitive_fp32),
        **_quant_args(plan, cfg),
    )
    checkpoint = None
    if random:
        seed = int(cfg.model.random_seed) + SEED_OFFSETS["dit" + (f".{expert}" if expert else "")]
        # drawn on the compute device whatever the build device, so offload does not change the weights
        model = random_dit(dit_cfg, dtype, device, seed, draw_on=compute_device or device, **common)
        source = f"random (seed {seed})"
    else:
        checkpoint, source = _locate(cfg, "dit", plan, expert)
        if device.type == "meta":  # offload=disk: the manager reads the blocks from the file
            model = build_dit_shell(dit_cfg, dtype, "meta", **common)
        else:
            model = load_dit(checkpoint, dit_cfg, dtype, device, progress=True, **common)
    info = _finish(model, plan, source, dtype, device, prepare)
    if isinstance(checkpoint, list):  # shards without an index: the offload manager reads their folder
        checkpoint = checkpoint[0].parent
    info["checkpoint"] = str(checkpoint) if checkpoint else None
    return model, info


def configure_speed(model: nn.Module, cfg: Any, device: torch.device) -> dict[str, Any]:
    """Attention backends, fused kernels and torch.compile (`speed.*`, docs/speed.md) on a built DIT;
    returns what runs, for the report."""
    from lightx2v_quant.models.wan.speed import configure_dit, speed_settings

    s = speed_settings(cfg)
    return configure_dit(model, attention=s.attention, cross_attention=s.cross_attention, fused=s.fused,
                         compile=s.compile, residual=s.residual, token_chunk=s.token_chunk,
                         device=device.type)


# -- VAE ----------------------------------------------------------------------------------------------
def build_vae(cfg: Any, device: torch.device, random: bool):
    from lightx2v_quant.models.wan import VaeConfig, load_vae, random_vae

    vae_cfg = VaeConfig.preset(str(cfg.model.vae))
    dtype = torch.float32  # the official VAE runs in fp32
    if random:
        seed = int(cfg.model.random_seed) + SEED_OFFSETS["vae"]
        model, source = random_vae(vae_cfg, dtype=dtype, device=device, seed=seed), f"random (seed {seed})"
    else:
        path = Path(cfg.model.path) / VAE_FILE
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found (model.path={cfg.model.path}); expected the official {VAE_FILE} there"
            )
        model, source = load_vae(path, vae_cfg, dtype=dtype, device=device, progress=True), str(path)
    info = _finish(model, None, source, dtype, device)
    info["runs"] = "fp32 (never quantized)"
    return model, info


def wrap_for_offload(dit: nn.Module, offload_cfg: Any, device: torch.device, **kwargs: Any) -> Any:
    """The seam to the offload manager: the returned handle is called like the DIT while its weights
    live in host memory (or on disk) and stream to ``device``; ``stats()`` and ``end()`` when it has them.
    Validation has checked that the manager exists."""
    from lightx2v_quant.offload import wrap_for_offload as wrap

    return wrap(dit, offload_cfg, device, **kwargs)
