"""Memory estimates before loading: DIT weight bytes per scheme, activations at the run's token count,
encoders; which offload modes fit a GPU and host, and ``offload=auto``'s choice (the least offload that fits).

The numbers are estimates from the architecture (Wan's tensor list), the formats' tensor specs and the
resolution, with a safety margin; ``offload.check_memory=false`` skips the check for a config known to fit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from lightx2v_quant.quant.schemes import Scheme

GB = 1e9
CONTEXT_BYTES = int(1.0 * GB)  # CUDA context, cuBLAS workspaces: card memory torch's allocator never sees
ACT_MARGIN = 1.25  # allocator fragmentation and short-lived temporaries on top of the counted activations
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
VAE_STRIDE = (4, 8, 8)  # Wan VAE: time, height, width
ORDER = ("none", "model", "block", "phase", "disk")  # least offload first

# Wan2.1 encoders (umT5-XXL, CLIP ViT-H/14) when the config gives no architecture (model.t5 / model.clip).
T5_DEFAULT = {"vocab_size": 256384, "dim": 4096, "dim_attn": 4096, "dim_ffn": 10240, "num_heads": 64,
              "num_layers": 24, "num_buckets": 32}
CLIP_DEFAULT = {"image_size": 224, "patch_size": 14, "width": 1280, "num_layers": 32, "mlp_dim": 5120,
                "out_dim": 1024}
VAE_PARAMS = 127_000_000  # Wan2.1 VAE (Wan2.1_VAE.pth: 508 MB of fp32)


@dataclass
class DitBytes:
    blocks: list[int]  # bytes of each block
    phases: list[int]  # bytes of each phase: (modulation + self_attn), (norm3 + cross_attn), (ffn)
    non_block: int

    @property
    def total(self) -> int:
        return sum(self.blocks) + self.non_block


def linear_bytes(n: int, k: int, scheme: Scheme | None, act_bytes: int, bias: bool = True) -> int:
    """Bytes of one [n, k] linear: the format's tensors (weight + scales), or the run dtype, plus the bias."""
    if scheme is None:
        weight = n * k * act_bytes
    else:
        weight = sum(_numel(s.shape) * s.dtype.itemsize for s in scheme.fmt.tensor_specs(n, k).values())
    return weight + (n * act_bytes if bias else 0)


def _numel(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def dit_bytes(dit: Any, scheme: Scheme | None, dtype: str = "bf16", sensitive_fp32: bool = False,
              i2v: bool = False) -> DitBytes:
    """Wan DIT weights: quantized linears of the blocks per ``scheme``; norms, modulation, embeddings and head
    in the run dtype (fp32 when ``sensitive_fp32``)."""
    b = DTYPE_BYTES[dtype]
    s = 4 if sensitive_fp32 else b
    d, f = int(dit.dim), int(dit.ffn_dim)
    attn = 4 * linear_bytes(d, d, scheme, b) + 2 * d * s  # q, k, v, o + RMS norm_q, norm_k
    cross = attn + (2 * linear_bytes(d, d, scheme, b) + d * s if i2v else 0)  # k_img, v_img, norm_k_img
    ffn = linear_bytes(f, d, scheme, b) + linear_bytes(d, f, scheme, b)
    phases = [6 * d * s + attn, 2 * d * s + cross, ffn]
    patch = _numel(tuple(dit.patch_size))
    out = int(dit.out_dim) * patch
    nb = (int(dit.in_dim) * d * patch + d  # patch_embedding
          + int(dit.text_dim) * d + d + d * d + d  # text_embedding
          + int(dit.freq_dim) * d + d + d * d + d  # time_embedding
          + d * 6 * d + 6 * d  # time_projection
          + d * out + out + 2 * d) * s  # head + head.modulation
    image_dim = dit.get("image_dim") if hasattr(dit, "get") else getattr(dit, "image_dim", None)
    if i2v and image_dim:
        e = int(image_dim)  # img_emb: LayerNorm (sensitive), Linear, GELU, Linear, LayerNorm (sensitive)
        nb += (2 * e + 2 * d) * s + (e * e + e + e * d + d) * b
    return DitBytes([sum(phases)] * int(dit.num_layers), phases, nb)


def dit_tokens(height: int, width: int, frames: int, patch: tuple[int, ...]) -> int:
    """Tokens of one video in the DIT: latent (1 + (frames-1)/4) x H/8 x W/8, then the patch (1, 2, 2)."""
    t = (frames - 1) // VAE_STRIDE[0] + 1
    return (t // patch[0]) * (height // VAE_STRIDE[1] // patch[1]) * (width // VAE_STRIDE[2] // patch[2])


def dit_activation_bytes(dit: Any, tokens: int, dtype: str = "bf16", batch: int = 1) -> int:
    """Peak activations of one DIT forward inside a block, with ACT_MARGIN.

    Self-attention: fp32 residual, normed input, q/k/v, q/k with RoPE in fp32, attention output.
    FFN: residual, normed input and output, the [tokens, ffn_dim] hidden before and after GELU, its 8-bit
    copy.
    """
    b = DTYPE_BYTES[dtype]
    d, f = int(dit.dim), int(dit.ffn_dim)
    attn = tokens * d * (4 + b + 3 * b + 2 * 4 + b)
    ffn = tokens * d * (4 + 2 * b) + tokens * f * (2 * b + 1)
    context = 2 * int(dit.get("text_len", 512) if hasattr(dit, "get") else 512) * d * b
    return int((max(attn, ffn) + context) * batch * ACT_MARGIN)


def t5_bytes(arch: Any, scheme: Scheme | None, dtype: str = "bf16") -> int:
    """umT5 encoder (config.T5Arch fields): token embedding in the run dtype, linears per ``scheme``."""
    a = {**T5_DEFAULT, **_fields(arch)}
    b = DTYPE_BYTES[dtype]
    d, da, f = int(a["dim"]), int(a["dim_attn"]), int(a["dim_ffn"])
    per_layer = (3 * linear_bytes(da, d, scheme, b, bias=False) + linear_bytes(d, da, scheme, b, bias=False)
                 + 2 * linear_bytes(f, d, scheme, b, bias=False) + linear_bytes(d, f, scheme, b, bias=False)
                 + 2 * d * b + int(a["num_buckets"]) * int(a["num_heads"]) * b)
    return int(a["vocab_size"]) * d * b + int(a["num_layers"]) * per_layer + d * b


def clip_bytes(arch: Any, scheme: Scheme | None) -> int:
    """CLIP vision tower (config.ClipArch fields), fp16."""
    a = {**CLIP_DEFAULT, **_fields(arch)}
    b = 2
    d, f, p = int(a["width"]), int(a["mlp_dim"]), int(a["patch_size"])
    per_layer = (linear_bytes(3 * d, d, scheme, b) + linear_bytes(d, d, scheme, b)
                 + linear_bytes(f, d, scheme, b) + linear_bytes(d, f, scheme, b) + 4 * d * b)
    grid = (int(a["image_size"]) // p) ** 2 + 1
    # patch embedding, position table, class token, pre/post norms, projection head
    return int(a["num_layers"]) * per_layer + (3 * p * p * d + grid * d + 5 * d + d * int(a["out_dim"])) * b


def _fields(arch: Any) -> dict[str, Any]:
    if arch is None:
        return {}
    if hasattr(arch, "items"):
        return {k: v for k, v in arch.items() if v is not None}
    return {k: v for k, v in vars(arch).items() if v is not None}


@dataclass
class ModeEstimate:
    mode: str
    granularity: str
    gpu: int  # peak bytes on the card while the DIT runs (or while the largest encoder runs, if larger)
    host: int  # host bytes the offloaded weights occupy (pinned arenas / disk ring + encoders kept on host)
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"disk ({self.granularity})" if self.mode == "disk" else self.mode

    def short(self) -> str:
        return f"{self.label} {self.gpu / GB:.1f} GB GPU / {self.host / GB:.1f} GB host"

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v / GB:.1f}" for k, v in self.parts.items() if v)
        return f"offload={self.label}: ~{self.gpu / GB:.1f} GB GPU ({parts}), ~{self.host / GB:.1f} GB host"


def estimate_modes(dit: DitBytes, activations: int, encoders: dict[str, int], t5_cpu: bool,
                   slots: int = 2, host_buffers: int = 3) -> list[ModeEstimate]:
    """GPU and host bytes of every mode. Offloading modes move the encoders on demand: they are on the card
    only while they run, one at a time (the T5 never, with t5_cpu)."""
    on_card = {k: v for k, v in encoders.items() if not (k == "t5" and t5_cpu)}
    largest_encoder = max(on_card.values(), default=0) + CONTEXT_BYTES
    host_encoders = sum(encoders.values())
    block, phase = max(dit.blocks), max(dit.phases)
    dit_host = dit.total
    common = {"activations": activations, "context": CONTEXT_BYTES}
    out = [ModeEstimate("none", "block", dit.total + sum(on_card.values()) + activations + CONTEXT_BYTES,
                        encoders.get("t5", 0) if t5_cpu else 0,
                        {"dit": dit.total, "encoders": sum(on_card.values()), **common})]
    for mode, gran, resident in (("model", "block", dit.total),
                                 ("block", "block", dit.non_block + slots * block),
                                 ("phase", "phase", dit.non_block + slots * phase),
                                 ("disk", "block", dit.non_block + slots * block),
                                 ("disk", "phase", dit.non_block + slots * phase)):
        unit = block if gran == "block" else phase
        host = host_encoders + (host_buffers * unit if mode == "disk" else dit_host)
        gpu = max(resident + activations + CONTEXT_BYTES, largest_encoder)
        out.append(ModeEstimate(mode, gran, gpu, host, {"dit weights": resident, **common}))
    return out


@dataclass
class OffloadPlan:
    requested: str
    mode: str
    granularity: str
    gpu_budget: float  # bytes
    host_budget: float
    estimates: list[ModeEstimate]
    note: str = ""

    def summary(self) -> dict[str, Any]:
        return {"requested": self.requested, "mode": self.mode, "granularity": self.granularity,
                "gpu_budget_gb": round(self.gpu_budget / GB, 1),
                "host_budget_gb": round(self.host_budget / GB, 1),
                "estimates_gb": {e.label: {"gpu": round(e.gpu / GB, 2), "host": round(e.host / GB, 2)}
                                 for e in self.estimates},
                "note": self.note}


def host_available_bytes() -> float:
    """MemAvailable from /proc/meminfo (Linux), else physical memory."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024.0
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0.0


def _get(node: Any, key: str, default: Any = None) -> Any:
    value = node.get(key, default) if hasattr(node, "get") else getattr(node, key, default)
    return default if value is None else value


def plan_offload(cfg: Any, hw: Any, schemes: dict[str, Scheme | None], problems: list[str],
                 host_bytes: float | None = None) -> OffloadPlan | None:
    """Resolve ``offload=auto`` and check that the requested mode fits, before any weight is loaded.

    ``schemes``: the scheme each component in use runs (None = unquantized); CLIP's presence means I2V.
    Appends to ``problems`` (with the estimate and the modes that fit) instead of raising.
    """
    oc = cfg.offload
    requested = str(oc.mode)
    if not hw.is_cuda:
        return OffloadPlan(requested, "none", "block", 0.0, 0.0, [], "no CUDA GPU: nothing to offload") \
            if requested in ("none", "auto") else None
    dit = cfg.model.dit
    dtype = str(cfg.model.dtype)
    weights = dit_bytes(dit, schemes.get("dit"), dtype, bool(_get(cfg.model, "sensitive_fp32", False)),
                        i2v="clip" in schemes)
    task = cfg.task
    tokens = dit_tokens(int(task.height), int(task.width), int(task.frames), tuple(dit.patch_size))
    activations = dit_activation_bytes(dit, tokens, dtype)
    encoders = {"t5": t5_bytes(_get(cfg.model, "t5"), schemes.get("t5"), dtype), "vae": 2 * VAE_PARAMS}
    if "clip" in schemes:
        encoders["clip"] = clip_bytes(_get(cfg.model, "clip"), schemes.get("clip"))
    estimates = estimate_modes(weights, activations, encoders, bool(_get(oc, "t5_cpu", False)),
                               int(_get(oc, "slots", 2)), int(_get(oc, "host_buffers", 3)))
    gpu_budget = float(_get(oc, "gpu_memory_gb", 0) or hw.memory_gb) * GB
    host_budget = host_available_bytes() if host_bytes is None else float(host_bytes)
    has_ckpt = bool(_get(cfg.dit_quant, "ckpt") or _get(cfg.model, "path"))
    fits = [e for e in estimates
            if e.gpu <= gpu_budget and e.host <= host_budget and (e.mode != "disk" or has_ckpt)]
    where = f"{hw.label()} ({gpu_budget / GB:.0f} GB GPU budget, {host_budget / GB:.0f} GB host available)"
    options = ", ".join(f"offload={e.label}" if e.mode != "disk"
                        else f"offload=disk offload.granularity={e.granularity}" for e in fits)
    table = "; ".join(e.short() for e in estimates)
    if bool(_get(oc, "lazy_load", False)) and requested in ("model", "block", "phase"):
        problems.append(f"offload.lazy_load=true reads blocks from disk, which is offload=disk "
                        f"(offload.granularity=block|phase), not offload={requested}")
    if requested == "auto":
        if not fits:
            problems.append(f"offload=auto: no offload mode fits {tokens} tokens of {cfg.model.name} on "
                            f"{where}. Estimates: {table}"
                            + ("" if has_ckpt else " (disk needs dit_quant.ckpt or model.path)")
                            + ". Lower the resolution, quantize the DIT / T5, or set offload.t5_cpu=true")
            return None
        choice = fits[0]
        note = f"offload=auto chose {choice.label} on {where}: {choice.describe()}"
        return OffloadPlan(requested, choice.mode, choice.granularity, gpu_budget, host_budget, estimates,
                           note)
    granularity = {"disk": str(oc.granularity), "phase": "phase"}.get(requested, "block")
    if requested == "disk" and not has_ckpt:
        problems.append("offload=disk reads the DIT from safetensors files: set dit_quant.ckpt=<per-block "
                        "folder or file> or model.path")
    mine = next((e for e in estimates if e.mode == requested and e.granularity == granularity), None)
    checked = mine is not None and bool(_get(oc, "check_memory", True)) and (requested != "disk" or has_ckpt)
    if checked and mine not in fits:
        short = "GPU" if mine.gpu > gpu_budget else "host RAM"
        fit = f"Options that fit: {options}" if options else f"No mode fits ({table})"
        problems.append(f"offload={mine.label} does not fit in {short} on {where}: estimated "
                        f"{mine.describe()}. {fit} (offload=auto picks one; offload.check_memory=false skips "
                        f"this check)")
    return OffloadPlan(requested, requested, granularity, gpu_budget, host_budget, estimates,
                       mine.describe() if mine else "")
