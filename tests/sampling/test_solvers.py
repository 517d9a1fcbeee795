"""Solvers: our UniPC equals diffusers' flow UniPC step by step on random model outputs; Euler and the
distilled update equal their formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightx2v_quant.sampling import denoise
from lightx2v_quant.sampling.schedules import UNIPC_SIGMA_MAX, distill_schedule, flow_unipc_schedule
from lightx2v_quant.sampling.solvers import FlowEuler, FlowUniPC, make_solver


def diffusers_unipc(steps: int, shift: float):
    from diffusers import UniPCMultistepScheduler

    ref = UniPCMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=shift,
        solver_order=2,
        solver_type="bh2",
        predict_x0=True,
        lower_order_final=True,
    )
    ref.set_timesteps(sigmas=np.linspace(UNIPC_SIGMA_MAX, 0.0, steps + 1)[:-1])
    return ref


@pytest.mark.parametrize("steps,shift", [(50, 5.0), (40, 3.0), (3, 5.0), (2, 5.0), (1, 5.0)])
def test_unipc_matches_diffusers_on_random_velocities(steps, shift):
    gen = torch.Generator().manual_seed(steps)
    x_ref = x_ours = torch.randn(1, 16, 3, 6, 8, generator=gen)
    ref, ours = diffusers_unipc(steps, shift), FlowUniPC(flow_unipc_schedule(steps, shift).sigmas)
    for t in ref.timesteps:
        v = torch.randn(x_ref.shape, generator=gen)
        x_ref = ref.step(v, t, x_ref).prev_sample
        x_ours = ours.step(v, x_ours)
        # coefficients in float64 here vs float32 in diffusers: agreement to float32 precision
        torch.testing.assert_close(x_ours, x_ref, rtol=2e-5, atol=2e-5)


def test_unipc_with_an_exact_velocity_lands_on_x0():
    """If the model knew x0, v = noise - x0 everywhere, and the solver must return x0 at sigma 0."""
    gen = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(4, 2, 4, 4, generator=gen), torch.randn(4, 2, 4, 4, generator=gen)
    sched = flow_unipc_schedule(20, 5.0)
    start = (1 - sched.sigmas[0]) * x0 + sched.sigmas[0] * noise  # on the flow path at the first sigma
    out = denoise(start, sched, "unipc", lambda x, t, i: noise - x0, progress=False)
    torch.testing.assert_close(out.latents, x0, rtol=1e-5, atol=1e-5)
    assert len(out.step_times) == 20


def test_euler_step_formula():
    sigmas = flow_unipc_schedule(5, 3.0).sigmas
    euler = FlowEuler(sigmas)
    x, v = torch.randn(3, 4), torch.randn(3, 4)
    for i in range(5):
        expected = x + (sigmas[i + 1] - sigmas[i]) * v
        x = euler.step(v, x)
        torch.testing.assert_close(x, expected)


def test_distilled_update_equals_lightx2vs_formula():
    """x0 = x - sigma_i v; x <- x0 + sigma_{i+1} v, and the last step returns x0."""
    sched = distill_schedule([1000, 750, 500, 250], 5.0)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(16, 2, 4, 4, generator=gen)
    vs = [torch.randn(x.shape, generator=gen) for _ in range(4)]
    out = denoise(x, sched, "euler", lambda _x, t, i: vs[i], progress=False).latents
    ref = x.clone()
    for i, v in enumerate(vs):
        x0 = ref - sched.sigmas[i] * v
        ref = x0 + sched.sigmas[i + 1] * v if i < 3 else x0
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


def test_loop_feeds_the_schedules_timesteps():
    sched = flow_unipc_schedule(6, 5.0)
    seen = []
    denoise(
        torch.zeros(1, 1),
        sched,
        "unipc",
        lambda x, t, i: (seen.append((i, t)), torch.zeros_like(x))[1],
        progress=False,
    )
    assert seen == list(enumerate(sched.timesteps))


def test_unknown_solver_and_sigma_one():
    with pytest.raises(ValueError, match="unknown solver"):
        make_solver("dpm", [0.5, 0.0])
    with pytest.raises(ValueError, match="sigmas < 1"):
        FlowUniPC([1.0, 0.5, 0.0])
