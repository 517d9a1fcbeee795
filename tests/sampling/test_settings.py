"""Sampler and video settings: the model's official defaults through the `auto` options, overrides, checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import lightx2v_quant.config  # noqa: F401  (registers the schema)
from lightx2v_quant.sampling import resolve_sampler, resolve_video, sampling_problems

CONF = Path(__file__).resolve().parents[2] / "conf"


def _cfg(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("config", overrides=list(overrides))


def test_model_alone_gives_its_official_settings():
    cfg = _cfg("model=wan2.1-i2v-14b-480p")
    s, v = resolve_sampler(cfg), resolve_video(cfg)
    assert (s.name, s.steps, s.shift, s.guide_scale, s.cfg) == ("unipc", 40, 3.0, 5.0, True)
    assert (v.height, v.width, v.frames, v.fps) == (480, 832, 81, 16)
    assert cfg.task.height == 480 and cfg.sampler.steps == 40  # concrete values for any reader of the config
    assert v.latent_shape() == (16, 21, 60, 104)


def test_distilled_model_and_distill_sampler():
    s = resolve_sampler(_cfg("model=wan2.1-t2v-14b-distill"))
    assert (s.name, s.solver, s.steps, s.cfg, s.step_list) == (
        "distill",
        "euler",
        4,
        False,
        (1000, 750, 500, 250),
    )
    s = resolve_sampler(_cfg("model=wan2.1-t2v-14b", "sampler=distill", "sampler.timesteps=[1000,500]"))
    assert (s.steps, s.cfg) == (2, False) and s.schedule().timesteps == pytest.approx((1000.0, 833.3333))


def test_overrides_win_over_the_model():
    s = resolve_sampler(_cfg("model=wan2.1-t2v-14b", "sampler=euler", "sampler.steps=7", "sampler.cfg=false"))
    assert (s.name, s.steps, s.cfg, s.shift) == ("euler", 7, False, 5.0)
    v = resolve_video(_cfg("model=wan2.1-t2v-14b", "task=480p", "task.frames=33"))
    assert (v.height, v.width, v.frames) == (480, 832, 33)


def test_two_experts_boundary_and_scales():
    s = resolve_sampler(_cfg("model=wan2.2-t2v-a14b"))
    assert (s.steps, s.shift, s.boundary) == (40, 12.0, 0.875)
    assert s.high_noise(0, 875.0) and not s.high_noise(1, 874.0)
    assert (s.scale_for(True), s.scale_for(False)) == (4.0, 3.0)
    s = resolve_sampler(_cfg("model=wan2.2-t2v-a14b", "sampler.boundary_step=2"))
    assert s.high_noise(1, 0.0) and not s.high_noise(2, 999.0)


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["sampler.timesteps=[1000,500]"], "sampler=distill for a step list"),
        (["sampler=distill", "sampler.timesteps=[500,1000]"], "decreasing"),
        (["sampler.shift=0"], "must be > 0"),
        (["sampler.steps=0"], "at least 1 step"),
        (["model=tiny-moe-t2v", "model.sampling.boundary=null"], "has two experts"),
        (["model=tiny-moe-t2v", "sampler.boundary=1.5"], "in (0, 1)"),
        (["sampler.name=dpm"], "expected one of"),
        (["task.width=72"], "multiples of 16"),
        (["task.frames=80"], "4k+1"),
    ],
)
def test_problems(overrides, needle):
    problems = sampling_problems(_cfg(*overrides))
    assert any(needle in p for p in problems), problems


def test_defaults_have_no_problems():
    for model in ("tiny-t2v", "tiny-i2v", "tiny-moe-t2v", "wan2.1-t2v-14b-distill", "wan2.2-i2v-a14b"):
        assert sampling_problems(_cfg(f"model={model}")) == []
