"""Flow-matching sampling: schedules (official UniPC grid, LightX2V distilled steps), solvers (UniPC,
Euler), classifier-free guidance with the official negative prompts, and the denoising loop."""

from lightx2v_quant.sampling.guidance import DEFAULT_NEGATIVE_PROMPT, default_negative_prompt, guide
from lightx2v_quant.sampling.loop import DenoiseResult, denoise
from lightx2v_quant.sampling.schedules import Schedule, distill_schedule, flow_unipc_schedule
from lightx2v_quant.sampling.settings import (
    SamplerSettings,
    VideoSettings,
    resolve_sampler,
    resolve_video,
    sampling_problems,
)
from lightx2v_quant.sampling.solvers import FlowEuler, FlowUniPC, make_solver

__all__ = [
    "DEFAULT_NEGATIVE_PROMPT",
    "DenoiseResult",
    "FlowEuler",
    "FlowUniPC",
    "SamplerSettings",
    "Schedule",
    "VideoSettings",
    "default_negative_prompt",
    "denoise",
    "distill_schedule",
    "flow_unipc_schedule",
    "guide",
    "make_solver",
    "resolve_sampler",
    "resolve_video",
    "sampling_problems",
]
