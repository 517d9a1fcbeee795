"""Launch-time checks of what the pipeline will run, beyond the quantization schemes: sampler and video
size, the input image, the model folder, the text encoder's device. Each problem is one line of
validate's single ConfigError (attention backends and offload memory are checked in validate)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightx2v_quant.sampling.settings import sampling_problems

DTYPES = ("bf16", "fp16", "fp32")


def _t5_on_cpu_problems(cfg: Any) -> list[str]:
    """offload.t5_cpu runs the text encoder on the CPU: its scheme's kernel must run there."""
    scheme_name = str(cfg.t5_quant.scheme)
    if not cfg.offload.t5_cpu or scheme_name in ("none", "auto"):
        return []
    from lightx2v_quant.hardware import HardwareSpec
    from lightx2v_quant.quant.kernels import get_kernel
    from lightx2v_quant.quant.schemes import REGISTRY, schemes_for_format

    scheme = REGISTRY.get(scheme_name)
    if scheme is None:  # an unknown name is reported by the scheme check
        return []
    cpu = HardwareSpec("cpu", "cpu", None, 0.0, "the CPU (offload.t5_cpu)")
    ok, why = get_kernel(scheme.kernel).availability(scheme.format, cpu)
    if ok:
        return []
    here = [
        s.name
        for s in schemes_for_format(scheme.format)
        if get_kernel(s.kernel).availability(s.format, cpu)[0]
    ]
    message = (
        f"t5_quant={scheme_name} with offload.t5_cpu=true: the T5 runs on the CPU, where {why}; "
        f"CPU schemes for {scheme.format}: {', '.join(here) or 'none'} (or t5_quant=none)"
    )
    return [message]


def pipeline_problems(cfg: Any) -> list[str]:
    problems = sampling_problems(cfg)
    model = cfg.model
    if str(model.dtype) not in DTYPES:
        problems.append(f"model.dtype={model.dtype}: expected one of {', '.join(DTYPES)}")
    if model.path is not None and not Path(str(model.path)).is_dir():
        problems.append(f"model.path={model.path}: no such folder (null = seeded random weights)")
    if str(model.task) == "i2v":
        if cfg.image:
            if not Path(str(cfg.image)).is_file():
                problems.append(f"image={cfg.image}: no such file")
        elif model.path is not None:
            problems.append(
                f"model {model.name} is image-to-video: give the first frame, image=path/to/image.jpg"
            )
    elif cfg.image:
        problems.append(f"image={cfg.image} is for image-to-video models; model {model.name} is {model.task}")
    problems += _t5_on_cpu_problems(cfg)
    if (
        cfg.report.reference
        and model.path is None
        and any(cfg[g].ckpt for g in ("dit_quant", "t5_quant", "clip_quant"))
    ):
        problems.append(
            "report.reference=true compares with the unquantized model, which needs the original "
            "weights: set model.path (a pre-quantized *_quant.ckpt alone is not enough)"
        )
    return problems
