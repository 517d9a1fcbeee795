"""Schedules: the official Wan UniPC grid, diffusers' flow UniPC on the same grid, LightX2V's distilled list."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightx2v_quant.sampling.schedules import (
    NUM_TRAIN_TIMESTEPS,
    UNIPC_SIGMA_MAX,
    distill_schedule,
    flow_unipc_schedule,
)


def official_wan_unipc(steps: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """The official FlowUniPCMultistepScheduler(shift=1).set_timesteps(steps, shift=shift), restated from
    its formulas: training sigmas 1 - linspace(1, 1/1000, 1000) reversed, stored in float32."""
    alphas = np.linspace(1, 1 / NUM_TRAIN_TIMESTEPS, NUM_TRAIN_TIMESTEPS)[::-1].copy()
    train = torch.from_numpy(1.0 - alphas).to(torch.float32)
    sigma_max, sigma_min = train[0].item(), train[-1].item()
    sigmas = np.linspace(sigma_max, sigma_min, steps + 1).copy()[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    timesteps = torch.from_numpy(sigmas * NUM_TRAIN_TIMESTEPS).to(torch.int64).numpy()
    return np.concatenate([sigmas, [0.0]]).astype(np.float32), timesteps


@pytest.mark.parametrize("steps,shift", [(50, 5.0), (40, 3.0), (40, 5.0), (4, 5.0), (1, 3.0)])
def test_unipc_grid_equals_the_official_formulas(steps, shift):
    sched = flow_unipc_schedule(steps, shift)
    sigmas, timesteps = official_wan_unipc(steps, shift)
    assert sched.timesteps == tuple(float(t) for t in timesteps)
    np.testing.assert_array_equal(np.array(sched.sigmas, dtype=np.float32), sigmas)
    assert sched.sigmas[-1] == 0.0 and sched.steps == steps


def test_unipc_grid_pinned_values():
    """The numbers the official sampler feeds the model (wan_architecture.md section 2.3)."""
    s50 = flow_unipc_schedule(50, 5.0).timesteps
    assert s50[:6] == (999, 995, 991, 987, 982, 978)
    assert s50[-6:] == (405, 356, 302, 241, 172, 92)
    s40 = flow_unipc_schedule(40, 3.0).timesteps
    assert s40[:3] == (999, 991, 982) and s40[-3:] == (195, 136, 71)


@pytest.mark.parametrize("steps,shift", [(50, 5.0), (40, 3.0)])
def test_unipc_grid_matches_diffusers_given_the_official_sigmas(steps, shift):
    """diffusers' flow UniPC builds another default grid (from sigma 1 down to 1/1000 before shifting), so
    we hand it the official unshifted sigmas; its shift and int64 truncation then agree exactly."""
    from diffusers import UniPCMultistepScheduler

    ref = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift)
    ref.set_timesteps(sigmas=np.linspace(UNIPC_SIGMA_MAX, 0.0, steps + 1)[:-1])
    sched = flow_unipc_schedule(steps, shift)
    assert ref.timesteps.tolist() == list(sched.timesteps)
    np.testing.assert_allclose(ref.sigmas.numpy(), np.array(sched.sigmas), rtol=0, atol=1e-7)


def test_diffusers_default_flow_grid_differs_from_the_official_one():
    """Documents why the comparison above passes sigmas explicitly."""
    from diffusers import UniPCMultistepScheduler

    ref = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    ref.set_timesteps(50)
    assert ref.timesteps.tolist()[-1] != flow_unipc_schedule(50, 5.0).timesteps[-1]


def test_distill_schedule_is_lightx2vs():
    sched = distill_schedule([1000, 750, 500, 250], 5.0)
    np.testing.assert_allclose(sched.sigmas, [1.0, 0.9375, 5 / 6, 0.625, 0.0], rtol=1e-6)
    np.testing.assert_allclose(sched.timesteps, [1000.0, 937.5, 833.3333, 625.0], rtol=1e-6)
    assert sched.timesteps[2] != int(sched.timesteps[2])  # float timesteps, not truncated
    assert sched.kind == "distill"


def test_distill_schedule_rejects_bad_steps():
    with pytest.raises(ValueError, match="1..1000"):
        distill_schedule([1000, 0], 5.0)
    with pytest.raises(ValueError, match="empty"):
        distill_schedule([], 5.0)
