"""Speed options of the DIT (config node ``speed``): attention backends, fused Triton kernels (with
activations emitted pre-quantized for the GEMMs that take them), and ``torch.compile`` per block.

``speed_settings(cfg)`` resolves the config, ``speed_problems(cfg, hw)`` lists what cannot run on the
machine (validation calls it), and ``configure_dit(model, ...)`` applies the settings to a built model
(the runner and benchmarks call it after ``prepare_model``). docs/speed.md explains each option.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from lightx2v_quant.attention.backends import LOWP_PV_FP8
from lightx2v_quant.models.wan.attention import backend_problem, backends
from lightx2v_quant.models.wan.dit_fused import TOKEN_CHUNK, default_token_chunk
from lightx2v_quant.models.wan.dit import (
    WanAttentionBlock,
    WanCrossAttention,
    WanDiT,
    WanFFN,
    WanLayerNorm,
    WanRMSNorm,
    WanSelfAttention,
)
from lightx2v_quant.quant.linear import QuantLinear


@dataclass
class SpeedSettings:
    attention: str = "sdpa"  # self-attention backend
    cross_attention: str = "sdpa"  # cross-attention backend
    fused: bool | None = None  # None: on where the kernels run (CUDA, Triton, bf16 / fp16 run dtype)
    compile: bool = False
    residual: str = "fp32"  # residual stream dtype: "fp32" (official) or "run_dtype"
    token_chunk: int | None = None  # tokens per output-projection / FFN chunk (fused path); 0 = all; None = auto
    notes: list[str] = field(default_factory=list)


def speed_settings(cfg: Any) -> SpeedSettings:
    """The resolved settings of a composed run config: ``speed.attention`` (null: ``hardware.attention``),
    ``speed.cross_attention`` (null: same as attention), ``speed.fused``, ``speed.compile``,
    ``speed.residual``, ``speed.token_chunk``."""
    sp = cfg.get("speed") or {}
    attention = sp.get("attention") or cfg.hardware.get("attention") or "sdpa"
    cross = sp.get("cross_attention") or attention
    residual = str(sp.get("residual") or "fp32")
    chunk = sp.get("token_chunk")
    return SpeedSettings(
        str(attention), str(cross), sp.get("fused"), bool(sp.get("compile", False)), residual, chunk
    )


RESIDUAL_DTYPES = ("fp32", "run_dtype")


def fused_problem(device: str, run_dtype: torch.dtype | str) -> str | None:
    """Why the fused kernels cannot run here, or None."""
    name = (
        run_dtype
        if isinstance(run_dtype, str)
        else {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(run_dtype, str(run_dtype))
    )
    if device != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":  # the interpreter runs them (tests)
        return f"the fused Triton kernels run on CUDA GPUs, not on {device}"
    if importlib.util.find_spec("triton") is None:
        return "the fused kernels need the Python package 'triton' (pip install triton)"
    if name not in ("bf16", "fp16"):
        return f"the fused kernels run bf16 / fp16 models (model.dtype={name} computes RoPE in float64)"
    return None


def speed_problems(cfg: Any, device: str, sm: int | None) -> list[str]:
    """One line per speed option that cannot run on this machine (for the launch-time ConfigError)."""
    s = speed_settings(cfg)
    problems = []
    for key, name in (("attention", s.attention), ("cross_attention", s.cross_attention)):
        why = backend_problem(name, device, sm)
        if why:
            where = "speed." + key if (cfg.get("speed") or {}).get(key) else "hardware.attention"
            ok = [b for b in backends() if backend_problem(b, device, sm) is None]
            problems.append(f"{where}={name}: {why}. Backends that run here: {', '.join(ok)}")
    if s.residual not in RESIDUAL_DTYPES:
        problems.append(
            f"speed.residual={s.residual}: unknown residual stream dtype; use one of {', '.join(RESIDUAL_DTYPES)}"
        )
    if s.token_chunk is not None and (
        isinstance(s.token_chunk, bool) or not isinstance(s.token_chunk, int) or s.token_chunk < 0
    ):
        problems.append(
            f"speed.token_chunk={s.token_chunk}: give a number of tokens (e.g. {TOKEN_CHUNK}) or 0 for all at once"
        )
    if s.fused is True:
        why = fused_problem(device, str(cfg.model.dtype))
        if why:
            problems.append(f"speed.fused=true: {why}; use speed.fused=null (automatic) or false")
    return problems


def _prequant_format(consumers: list[torch.nn.Module]) -> str | None:
    """The per-token format every consumer takes pre-quantized, or None (one consumer that cannot -> None)."""
    formats = set()
    for layer in consumers:
        if not isinstance(layer, QuantLinear):
            return None
        formats.add(layer.kernel.prequantized_input(layer))
    return formats.pop() if len(formats) == 1 and None not in formats else None


def configure_dit(
    model: WanDiT,
    *,
    attention: str = "sdpa",
    cross_attention: str | None = None,
    fused: bool | None = None,
    prequant: bool = True,
    compile: bool = False,
    residual: str = "fp32",
    token_chunk: int | None = None,
    fuse_gelu: bool = True,
    fuse_residual: bool = True,
    device: str | None = None,
) -> dict[str, Any]:
    """Apply the speed settings to a built, prepared DIT on its device; return what runs (for reports).

    ``fused=None`` turns the fused kernels on where they run; ``prequant`` lets the fused norms (and the FFN's
    fused GELU) emit fp8 / int8 activations when every GEMM that reads them takes pre-quantized input.
    ``compile`` compiles each block with ``torch.compile(fullgraph=True)``; the blocks share one compiled
    graph. ``residual`` is the dtype of the residual stream: "fp32" (the official numerics) or "run_dtype".
    ``token_chunk``: tokens per chunk of the output projections and the FFN on the fused path (0: all at
    once; None: ``dit_fused.default_token_chunk``, 128 tokens per SM on a GPU so that each chunk's GEMMs
    fill whole waves, 16,896 on an H100); 16384 measured 1.3% faster than 8192 at the same fp8 peak on an
    H100, all at once adds ~0.6 GiB (benchmarks/results/logs/token_chunk_nvidia-h100.json).
    ``fuse_gelu`` (default on) emits the FFN hidden with GELU + quantization in one kernel when the down
    projection takes pre-quantized input; on CUDA it uses the GPU's approximate tanh (``fused.gelu_quantize(...,
    fast=True)``): on an H100 0.26 ms per [16384, 13824] chunk against 0.53 ms for GELU + the GEMM's own
    quantization (benchmarks/results/fused_ops_fast_nvidia-h100.md); with PyTorch's exact tanhf the kernel
    is compute-bound and slower than unfused (0.59 ms).
    ``fuse_residual`` (default on): on the fused path, an output projection whose kernel can
    (``QuantLinear.adds_into``: the `triton` fp8 / int8 GEMM, a 16-bit residual stream, one gate per
    channel) adds into the residual stream in its GEMM's epilogue instead of writing its output for a
    separate add; the numerics are the same.
    ``device`` is the
    compute device type ("cuda" / "cpu"); default: where the parameters are (pass it for offloaded models,
    whose weights live on the host between uses).
    """
    if residual not in RESIDUAL_DTYPES:
        raise ValueError(f"residual={residual!r}: use one of {', '.join(RESIDUAL_DTYPES)}")
    if token_chunk is not None and (isinstance(token_chunk, bool) or not isinstance(token_chunk, int) or token_chunk < 0):
        raise ValueError(f"token_chunk={token_chunk!r}: a number of tokens, 0 for all at once, or None (auto)")
    device = device or next(model.parameters()).device.type
    if token_chunk is None:
        token_chunk = default_token_chunk(device)
    for name in (attention, cross_attention or attention):
        why = backend_problem(name, device, _sm(device))
        if why:
            raise ValueError(why)
    for m in model.modules():
        if isinstance(m, WanSelfAttention):
            m.attention_backend = attention
        elif isinstance(m, WanCrossAttention):
            m.attention_backend = cross_attention or attention
    why = fused_problem(device, model.run_dtype)
    if fused is True and why:
        raise ValueError(f"fused=True: {why}")
    use_fused = why is None if fused is None else bool(fused)
    # import lazily-loaded kernel modules now, outside any torch.compile trace
    if use_fused:
        importlib.import_module("lightx2v_quant.fused")
    if {attention, cross_attention} & LOWP_PV_FP8.keys():
        importlib.import_module("lightx2v_quant.attention.lowp_triton")
    sites = {"self_attn": 0, "cross_attn": 0, "ffn": 0, "ffn_hidden": 0}
    residual_dtype = torch.float32 if residual == "fp32" else model.run_dtype
    for block in model.blocks:
        _configure_block(block, use_fused, prequant, fuse_gelu, sites)
        block.residual_dtype = residual_dtype
        block.token_chunk = token_chunk
        block.fuse_residual = fuse_residual
    model.head.fused = use_fused
    if compile:
        compile_blocks(model)
    report = asdict(
        SpeedSettings(attention, cross_attention or attention, use_fused, compile, residual, token_chunk)
    )
    report.pop("notes")
    report["prequantized_inputs"] = {k: f"{v}/{len(model.blocks)} blocks" for k, v in sites.items()}
    if fused is None and why:
        report["fused_off_because"] = why
    return report


def _configure_block(
    block: WanAttentionBlock, fused: bool, prequant: bool, fuse_gelu: bool, sites: dict[str, int]
) -> None:
    block.fused = fused
    sa = block.self_attn
    sa.fused = fused and isinstance(sa.norm_q, WanRMSNorm) and isinstance(sa.norm_k, WanRMSNorm)
    block.cross_attn.fused = fused and isinstance(block.cross_attn.norm_q, WanRMSNorm)
    norm3 = block.norm3 if isinstance(block.norm3, WanLayerNorm) else None
    if norm3 is not None:
        norm3.fused_to = (block.run_dtype, None) if fused else None
    # GELU(tanh) + quantization of the FFN hidden in one kernel (set below if the down projection takes it)
    ffn = block.ffn if isinstance(block.ffn, WanFFN) and _is_tanh_gelu(block.ffn[1]) else None
    if ffn is not None:
        ffn.gelu_quant = None
    if not (fused and prequant):
        block.prequant = (None, None, None)
        return
    affine_norm3 = getattr(block.norm3, "weight", None) is not None
    fmts = (
        _prequant_format([sa.q, sa.k, sa.v]),
        _prequant_format([block.cross_attn.q]) if affine_norm3 else None,
        _prequant_format([block.ffn[0]]),
    )
    block.prequant = fmts
    if norm3 is not None:
        norm3.fused_to = (block.run_dtype, fmts[1])
    hidden = _prequant_format([ffn[2]]) if ffn is not None and fuse_gelu else None
    if ffn is not None:
        ffn.gelu_quant = hidden
    for key, fmt in zip(sites, (*fmts, hidden)):
        sites[key] += fmt is not None


def _is_tanh_gelu(act: torch.nn.Module) -> bool:
    return isinstance(act, torch.nn.GELU) and act.approximate == "tanh"


def compile_blocks(model: WanDiT, **options: Any) -> None:
    """``torch.compile`` every DIT block in place (like diffusers' compile_repeated_blocks): fullgraph, static
    shapes; the blocks share the compiled code (their parameters are graph inputs)."""
    for block in model.blocks:
        block.compile(fullgraph=True, dynamic=False, **options)


def _sm(device: str) -> int | None:
    if device != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability()
    return major * 10 + minor
