"""The denoising loop: walk a schedule with a solver, asking a velocity function at each step."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from lightx2v_quant.sampling.schedules import Schedule
from lightx2v_quant.sampling.solvers import make_solver

# velocity(x [C,F,H,W] float32, model timestep, step index) -> v, same shape
Velocity = Callable[[torch.Tensor, float, int], torch.Tensor]


@dataclass
class DenoiseResult:
    latents: torch.Tensor  # [C, F, H, W] float32, the clean sample
    step_times: list[float] = field(default_factory=list)  # seconds per step (device-synchronised)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def denoise(
    noise: torch.Tensor,
    schedule: Schedule,
    solver: str,
    velocity: Velocity,
    *,
    progress: bool = True,
    desc: str = "denoising",
) -> DenoiseResult:
    """Start from ``noise`` (float32, at sigma = schedule.sigmas[0]) and return the clean latents."""
    stepper = make_solver(solver, schedule.sigmas)
    x = noise.float()
    times: list[float] = []
    bar = tqdm(schedule.timesteps, desc=desc, unit="step", disable=not progress)
    for i, t in enumerate(bar):
        start = time.perf_counter()
        v = velocity(x, t, i)
        x = stepper.step(v, x)
        _sync(x.device)
        times.append(time.perf_counter() - start)
        bar.set_postfix(t=f"{t:g}")
    return DenoiseResult(latents=x, step_times=times)
