"""Typed config: the dataclass schema of every Hydra group, registered in Hydra's ConfigStore.

The YAML files under ``conf/`` are the options; this schema types them, so a misspelt key or a value of
the wrong type fails at composition. Cross-group rules (scheme vs hardware, kernel libraries) live in
``lightx2v_quant.validate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore


@dataclass
class QuantConfig:
    """One component's quantization (`dit_quant`, `t5_quant`, `clip_quant`)."""

    scheme: str = "none"  # a registry name, "none" or "auto"
    format: Optional[str] = None  # filled by the option file from the registry
    kernel: Optional[str] = None
    ckpt: Optional[str] = None  # a pre-quantized file or folder; None: discover in model.path or quantize online


@dataclass
class QuantOptions:
    """Settings shared by all components (`quant.*`)."""

    fallback: str = "none"  # "none": a scheme that cannot run is an error; "native": use our kernel for its format
    fast_accum: bool = False  # fp8 torch._scaled_mm with fast (lower precision) accumulation


@dataclass
class HardwareConfig:
    name: str = "auto"  # "auto" = detect this machine
    description: str = ""
    compute_capability: Optional[str] = None  # "9.0"; None = CPU only
    memory_gb: float = 0.0
    attention: str = "sdpa"  # default attention backend on this hardware


@dataclass
class OffloadConfig:
    mode: str = "none"  # none | model | block | phase | disk | auto (the least offload that fits; see docs/offload.md)
    granularity: str = "block"  # unit moved by `disk`: block | phase
    lazy_load: bool = False  # read block weights from per-block files on demand
    num_disk_workers: int = 4
    pin_memory: bool = True
    t5_cpu: bool = False  # run the text encoder on the CPU
    slots: int = 2  # device buffers the units stream through (2 = double buffer; more = deeper prefetch)
    host_buffers: int = 3  # disk: pinned host buffers the reader threads fill ahead (host RAM = this many units)
    check_memory: bool = True  # fail before loading when the estimate says the mode does not fit
    gpu_memory_gb: Optional[float] = None  # plan for this much GPU memory (None: the card's)


@dataclass
class DitArch:
    """The DIT architecture; fields equal those of ``lightx2v_quant.models.wan.WanDiTConfig``."""

    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    text_len: int = 512
    eps: float = 1e-6
    patch_size: list[int] = field(default_factory=lambda: [1, 2, 2])
    image_dim: Optional[int] = None  # 1280 for Wan2.1 I2V (CLIP tokens in cross-attention)
    qk_norm: bool = True
    cross_attn_norm: bool = True


@dataclass
class T5Arch:
    """umT5 text encoder architecture; fields = models.wan.t5.T5Config (defaults: umT5-XXL)."""

    vocab_size: int = 256384
    dim: int = 4096
    dim_attn: int = 4096
    dim_ffn: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32
    max_dist: int = 128
    eps: float = 1e-6


@dataclass
class ClipArch:
    """CLIP vision tower architecture; fields = models.wan.clip.ClipConfig (defaults: ViT-H/14)."""

    image_size: int = 224
    patch_size: int = 14
    width: int = 1280
    num_layers: int = 32
    num_heads: int = 16
    mlp_dim: int = 5120
    out_dim: int = 1024
    eps: float = 1e-5


@dataclass
class SamplingDefaults:
    """A model's official sampling settings; every null `sampler.*` value takes the model's."""

    solver: str = "unipc"  # unipc | euler | distill
    steps: int = 50
    shift: float = 5.0
    guide_scale: float = 5.0
    guide_scale_low_noise: Optional[float] = None  # Wan2.2 A14B: scale while the low-noise expert runs
    cfg: bool = True
    timesteps: Optional[list[int]] = None  # distilled models: LightX2V's denoising_step_list
    boundary: Optional[float] = None  # Wan2.2 A14B: high-noise expert while t >= boundary * 1000
    boundary_step: Optional[int] = None  # Wan2.2 A14B distilled: low-noise expert from this step index


@dataclass
class VideoDefaults:
    """A model's official video size; every null `task.*` value takes the model's."""

    height: int = 480
    width: int = 832
    frames: int = 81
    fps: int = 16


@dataclass
class ModelConfig:
    name: str = "???"
    family: str = "wan2.1"  # wan2.1 | wan2.2
    task: str = "t2v"  # t2v | i2v
    path: Optional[str] = None  # folder of the official files; None = seeded random weights
    dtype: str = "bf16"  # run dtype: bf16 | fp16 | fp32
    sensitive_fp32: bool = False  # keep norms / embeddings / modulation in fp32
    moe: bool = False  # Wan2.2 A14B: two DITs (high_noise_model/, low_noise_model/) switched at a boundary
    random_seed: int = 0  # seed of the random weights when path is null (independent of the sampling seed)
    vae: str = "wan2.1"  # VAE preset (lightx2v_quant.models.wan.VaeConfig.preset): wan2.1 | tiny
    tokenizer: str = "umt5"  # umt5 (model.path/google/umt5-xxl) | byte (tiny models; no files needed)
    dit: DitArch = field(default_factory=DitArch)
    t5: T5Arch = field(default_factory=T5Arch)
    clip: ClipArch = field(default_factory=ClipArch)  # used by i2v only
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)
    video: VideoDefaults = field(default_factory=VideoDefaults)


@dataclass
class TaskConfig:
    """Video size; `task=auto` interpolates the model's official size (`model.video`), and a null value
    falls back to it. For image-to-video, height x width is the pixel budget and the frame follows the
    input image's aspect ratio."""

    name: str = "auto"
    height: Optional[int] = None
    width: Optional[int] = None
    frames: Optional[int] = None  # 4k+1
    fps: Optional[int] = None


@dataclass
class SamplerConfig:
    """The option files interpolate the model's official settings (`model.sampling`) into the fields they
    do not set; a null value falls back to the model's too."""

    name: str = "auto"  # unipc | euler | distill (auto: the model's solver)
    steps: Optional[int] = None
    shift: Optional[float] = None
    guide_scale: Optional[float] = None
    guide_scale_low_noise: Optional[float] = None  # Wan2.2 A14B: the low-noise expert's scale
    cfg: Optional[bool] = None  # classifier-free guidance (two DIT passes per step)
    timesteps: Optional[list[int]] = None  # distill: the step list, e.g. [1000, 750, 500, 250]
    boundary: Optional[float] = None  # Wan2.2 A14B: expert switch at t = boundary * 1000
    boundary_step: Optional[int] = None  # Wan2.2 A14B: or at this step index


@dataclass
class SpeedOptions:
    """How the DIT runs fast (`speed.*`; docs/speed.md). Checked at launch by validate."""

    attention: Optional[str] = None  # self-attention backend; None = hardware.attention
    cross_attention: Optional[str] = None  # None = same as attention
    fused: Optional[bool] = None  # fused Triton norm/modulation/RoPE/residual kernels; None = where they run
    compile: bool = False  # torch.compile each DIT block (fullgraph; the blocks share one graph)
    residual: str = "fp32"  # residual stream dtype: fp32 (official) or run_dtype (LightX2V / diffusers)
    token_chunk: Optional[int] = None  # tokens per output-projection / FFN chunk (fused path); None = 128 per SM; 0 = all


@dataclass
class ReportConfig:
    reference: bool = False  # also run the unquantized pipeline and report the error


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    dit_quant: QuantConfig = field(default_factory=QuantConfig)
    t5_quant: QuantConfig = field(default_factory=QuantConfig)
    clip_quant: QuantConfig = field(default_factory=QuantConfig)
    offload: OffloadConfig = field(default_factory=OffloadConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    quant: QuantOptions = field(default_factory=QuantOptions)
    speed: SpeedOptions = field(default_factory=SpeedOptions)
    report: ReportConfig = field(default_factory=ReportConfig)
    prompt: str = "A cat walks on the grass, realistic style."
    negative_prompt: Optional[str] = None  # None: the official default negative prompt
    image: Optional[str] = None  # input image for i2v
    seed: int = 42
    lightx2v_config: Optional[str] = None  # a LightX2V JSON config to translate onto these groups


QUANT_GROUPS = ("dit_quant", "t5_quant", "clip_quant")


def register_configs() -> None:
    """Store the schema as `config_schema`; conf/config.yaml lists it first in its defaults."""
    ConfigStore.instance().store(name="config_schema", node=RunConfig)


register_configs()
