"""Noise schedules for flow matching: the sigmas a solver walks and the timesteps the DIT is given.

Convention (Wan): ``x_t = (1 - sigma) * x0 + sigma * noise``, the model predicts ``v = noise - x0`` and
receives ``t = sigma * 1000``. A shift bends the grid towards high noise:
``sigma' = shift * sigma / (1 + (shift - 1) * sigma)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

NUM_TRAIN_TIMESTEPS = 1000
# The official FlowUniPCMultistepScheduler builds its training sigmas as 1 - linspace(1, 1/1000, 1000)
# reversed, stores them in float32 and starts inference from the first one: float32(0.999).
UNIPC_SIGMA_MAX = float(np.float32(1.0 - 1.0 / NUM_TRAIN_TIMESTEPS))
DISTILL_STEPS = (1000, 750, 500, 250)  # LightX2V's 4-step distilled models


@dataclass(frozen=True)
class Schedule:
    """``sigmas`` has one value more than ``timesteps``: the final sigma (0, the clean sample)."""

    sigmas: tuple[float, ...]  # solver grid, float32 values as Python floats
    timesteps: tuple[float, ...]  # what the DIT receives at each step
    kind: str  # "unipc" (official grid, int64-truncated timesteps) or "distill" (picked, float timesteps)

    def __post_init__(self) -> None:
        if len(self.sigmas) != len(self.timesteps) + 1:
            raise ValueError(
                f"{len(self.sigmas)} sigmas for {len(self.timesteps)} timesteps: expected one more"
            )

    @property
    def steps(self) -> int:
        return len(self.timesteps)


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_unipc_schedule(steps: int, shift: float) -> Schedule:
    """The official Wan grid (``FlowUniPCMultistepScheduler.set_timesteps``), used by UniPC and Euler.

    ``steps`` sigmas evenly spaced from 0.999 towards 0 (the 0 itself dropped), shifted; the model gets
    ``int64(sigma * 1000)`` (truncated, so 50 steps at shift 5 start 999, 995, 991 and end 172, 92);
    the solver uses the float32 sigmas and a final sigma of 0.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    base = np.linspace(UNIPC_SIGMA_MAX, 0.0, steps + 1)[:-1]  # float64, as the official code
    sigmas = shift_sigmas(base, shift)
    timesteps = (sigmas * NUM_TRAIN_TIMESTEPS).astype(np.int64)  # truncation, as torch .to(int64)
    sigmas32 = np.concatenate([sigmas, [0.0]]).astype(np.float32)
    return Schedule(tuple(float(s) for s in sigmas32), tuple(float(t) for t in timesteps), "unipc")


def distill_schedule(step_list: Sequence[float], shift: float) -> Schedule:
    """LightX2V's step-distilled grid: 1000 sigmas from 1.0 (float32), shifted, picked at ``1000 - step``.

    ``[1000, 750, 500, 250]`` at shift 5 gives sigmas 1.0, 0.9375, 0.8333, 0.625 and float (not
    truncated) timesteps 1000, 937.5, 833.33, 625; after the last step the sample jumps to sigma 0.
    """
    if not step_list:
        raise ValueError("the distilled step list is empty")
    bad = [s for s in step_list if not (0 < s <= NUM_TRAIN_TIMESTEPS) or int(s) != s]
    if bad:
        raise ValueError(f"distilled steps must be integers in 1..{NUM_TRAIN_TIMESTEPS}, got {bad}")
    grid = torch.linspace(1.0, 0.0, NUM_TRAIN_TIMESTEPS + 1)[:-1]  # float32, as LightX2V
    grid = shift * grid / (1 + (shift - 1) * grid)
    index = torch.tensor([NUM_TRAIN_TIMESTEPS - int(s) for s in step_list])
    sigmas = grid[index]
    timesteps = sigmas * NUM_TRAIN_TIMESTEPS
    return Schedule(tuple(sigmas.tolist()) + (0.0,), tuple(timesteps.tolist()), "distill")
