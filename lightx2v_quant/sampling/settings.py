"""Resolve what a run samples: sampler and video settings from `sampler.*` / `task.*`, and the checks on them.

The `auto` options (and the unset fields of the others) interpolate the model's official settings
(`model.sampling.*`, `model.video.*`), so `model=wan2.1-i2v-14b-480p` alone gives the official 40 steps at
shift 3, 480x832, 81 frames; a null value falls back to the model's too. For the distilled sampler the
number of steps is the length of its step list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lightx2v_quant.sampling.schedules import DISTILL_STEPS, Schedule, distill_schedule, flow_unipc_schedule

SAMPLERS = ("auto", "unipc", "euler", "distill")
VAE_STRIDE = (4, 8, 8)  # time, height, width
PATCH = (1, 2, 2)


@dataclass(frozen=True)
class SamplerSettings:
    name: str  # unipc | euler | distill
    steps: int
    shift: float
    guide_scale: float
    guide_scale_low_noise: float | None  # Wan2.2 A14B: scale while the low-noise expert runs
    cfg: bool
    step_list: tuple[int, ...] | None  # distill: LightX2V's denoising_step_list
    boundary: float | None  # Wan2.2 A14B: the high-noise expert runs while t >= boundary * 1000
    boundary_step: int | None  # or: the low-noise expert from this step index on

    @property
    def solver(self) -> str:
        return "euler" if self.name == "distill" else self.name

    def schedule(self) -> Schedule:
        if self.name == "distill":
            return distill_schedule(self.step_list or DISTILL_STEPS, self.shift)
        return flow_unipc_schedule(self.steps, self.shift)

    def high_noise(self, step: int, timestep: float) -> bool:
        """Wan2.2 A14B: whether step ``step`` (model timestep ``timestep``) belongs to the high-noise expert."""
        if self.boundary_step is not None:
            return step < self.boundary_step
        if self.boundary is None:
            raise ValueError("a two-expert model needs sampler.boundary or sampler.boundary_step")
        return timestep >= self.boundary * 1000

    def scale_for(self, high_noise: bool) -> float:
        if not high_noise and self.guide_scale_low_noise is not None:
            return self.guide_scale_low_noise
        return self.guide_scale

    def summary(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()} | {
            "solver": self.solver
        }


@dataclass(frozen=True)
class VideoSettings:
    height: int
    width: int
    frames: int
    fps: int

    def latent_shape(self, channels: int = 16) -> tuple[int, int, int, int]:
        """[C, F, H, W] of the latents: 4x in time (causal: 4k+1 frames -> k+1), 8x in space."""
        return (
            channels,
            (self.frames - 1) // VAE_STRIDE[0] + 1,
            self.height // VAE_STRIDE[1],
            self.width // VAE_STRIDE[2],
        )


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value


def resolve_sampler(cfg: Any) -> SamplerSettings:
    """The sampler settings of ``cfg`` (raises ValueError on an unknown sampler name)."""
    s, d = cfg.sampler, cfg.model.sampling
    name = str(s.name)
    if name == "auto":
        name = str(d.solver)
    if name not in SAMPLERS[1:]:
        raise ValueError(f"sampler {name!r}: expected one of {', '.join(SAMPLERS)}")
    step_list = _pick(s.timesteps, d.timesteps if name == "distill" else None)
    if name == "distill" and not step_list:
        step_list = list(DISTILL_STEPS)
    steps = len(step_list) if name == "distill" else int(_pick(s.steps, d.steps))
    cfg_default = False if name == "distill" else d.cfg  # distilled models are trained without CFG
    return SamplerSettings(
        name=name,
        steps=steps,
        shift=float(_pick(s.shift, d.shift)),
        guide_scale=float(_pick(s.guide_scale, d.guide_scale)),
        guide_scale_low_noise=_opt_float(_pick(s.guide_scale_low_noise, d.guide_scale_low_noise)),
        cfg=bool(_pick(s.cfg, cfg_default)),
        step_list=tuple(int(x) for x in step_list) if name == "distill" else None,
        boundary=_opt_float(_pick(s.boundary, d.boundary)),
        boundary_step=_pick(s.boundary_step, d.boundary_step),
    )


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def resolve_video(cfg: Any) -> VideoSettings:
    t, d = cfg.task, cfg.model.video
    return VideoSettings(
        int(_pick(t.height, d.height)),
        int(_pick(t.width, d.width)),
        int(_pick(t.frames, d.frames)),
        int(_pick(t.fps, d.fps)),
    )


def sampling_problems(cfg: Any) -> list[str]:
    """Every problem with the sampler and video settings, as lines for one ConfigError."""
    problems: list[str] = []
    try:
        s = resolve_sampler(cfg)
    except ValueError as exc:
        return [str(exc)]
    if s.name == "distill":
        steps = list(s.step_list)
        bad = [x for x in steps if not 0 < x <= 1000]
        if bad or steps != sorted(steps, reverse=True) or len(set(steps)) != len(steps):
            problems.append(
                f"sampler.timesteps={steps}: expected distinct integers in 1..1000, decreasing, "
                f"e.g. [1000,750,500,250]"
            )
    elif cfg.sampler.timesteps is not None:
        problems.append(
            f"sampler.timesteps is the distilled step list; sampler {s.name} uses sampler.steps "
            f"(use sampler=distill for a step list)"
        )
    if s.steps < 1:
        problems.append(f"sampler.steps={s.steps}: need at least 1 step")
    if s.shift <= 0:
        problems.append(f"sampler.shift={s.shift}: must be > 0")
    if bool(cfg.model.get("moe", False)):
        if s.boundary is None and s.boundary_step is None:
            problems.append(
                f"model {cfg.model.name} has two experts: set sampler.boundary (e.g. 0.875) "
                f"or sampler.boundary_step"
            )
        elif s.boundary is not None and not 0 < s.boundary < 1:
            problems.append(f"sampler.boundary={s.boundary}: expected a fraction of 1000 timesteps in (0, 1)")
    v = resolve_video(cfg)
    spatial = VAE_STRIDE[1] * PATCH[1]
    size_bad = [
        f"{k}={val}"
        for k, val in (("task.height", v.height), ("task.width", v.width))
        if val <= 0 or val % spatial
    ]
    if size_bad:
        problems.append(
            f"{', '.join(size_bad)}: height and width must be positive multiples of {spatial} "
            f"(VAE stride 8 x patch 2), e.g. 480x832"
        )
    if v.frames < 1 or (v.frames - 1) % VAE_STRIDE[0]:
        near = max(1, (v.frames - 1) // VAE_STRIDE[0] * VAE_STRIDE[0] + 1)
        problems.append(
            f"task.frames={v.frames}: the frame count must be 4k+1 (1, 5, ..., 81); e.g. {near} or {near + 4}"
        )
    if v.fps < 1:
        problems.append(f"task.fps={v.fps}: must be >= 1")
    return problems
