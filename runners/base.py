"""The Wan runner: build the components, encode the prompt, denoise, decode, write video and report.

One class serves text-to-video, the 4-step distilled models (a sampler setting: their step list, no
CFG) and the Wan2.2 A14B models (two DIT experts switched at the boundary); ``runners.i2v`` adds the
image conditioning. ``run()`` returns the result that app.py stores in result.json.
"""

from __future__ import annotations

import gc
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from lightx2v_quant.app import write_json_atomic
from lightx2v_quant.report import (
    RANDOM_WEIGHTS_WARNING,
    MemoryMonitor,
    StageTimes,
    psnr,
    relative_error,
    summary_lines,
)
from lightx2v_quant.sampling import denoise, guide, resolve_sampler, resolve_video
from lightx2v_quant.sampling.guidance import resolve_negative_prompt
from lightx2v_quant.validate import Plan
from lightx2v_quant.video import to_uint8_frames, write_mp4
from runners import components as comp

log = logging.getLogger("lightx2v_quant")
REPORT_FILE, VIDEO_FILE, CONFIG_FILE = "report.json", "video.mp4", "resolved_config.yaml"


@dataclass
class Conditioning:
    context: list[torch.Tensor]  # [[L, text_dim]] for the prompt
    context_neg: list[torch.Tensor] | None  # the negative prompt's, when CFG is on
    clip_fea: torch.Tensor | None = None  # [1, 257, image_dim] (Wan2.1 I2V)
    y: torch.Tensor | None = None  # [1, 20, F, H, W] first-frame latents + mask (I2V)


@dataclass
class Generation:
    latents: torch.Tensor  # [16, F, H, W] float32, final
    frames: Any  # [T, H, W, 3] uint8
    step_times: list[float]
    experts: list[str]  # which DIT ran each step
    dit_calls: dict[str, int]
    times: dict[str, float] = field(default_factory=dict)


class WanRunner:
    """Text-to-video (and the distilled and two-expert variants). Subclasses override ``image_inputs``."""

    kind = "t2v"

    def __init__(self, cfg: Any, plan: Plan, output_dir: Path) -> None:
        self.cfg, self.plan, self.out = cfg, plan, Path(output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = (
            torch.device("cuda", torch.cuda.current_device())
            if plan.hardware.is_cuda
            else torch.device("cpu")
        )
        self.random = cfg.model.path is None
        self.sampler = resolve_sampler(cfg)
        self.video = resolve_video(cfg)
        self.memory = MemoryMonitor(self.device)
        self.components: dict[str, dict[str, Any]] = {}
        self.notes: list[str] = list(plan.notes)
        self.vae: Any = None
        mode, granularity = self.offload_mode()
        self.offload: dict[str, Any] = {"mode": mode, "granularity": granularity}
        resolved = getattr(plan, "offload", None)
        if resolved is not None and callable(getattr(resolved, "summary", None)):
            self.offload["plan"] = resolved.summary()  # validation's memory estimate (and auto's choice)
        self._cached: dict[str, Any] = {}  # unquantized encoder outputs, shared with the reference run

    # -- hooks ----------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Settle the video size before anything is built (I2V: from the image's aspect ratio)."""

    def image_inputs(self, plans: dict, times: StageTimes, bar: tqdm) -> tuple[Any, Any]:
        """(clip_fea, y) for the DIT; text-to-video has none."""
        return None, None

    def label(self) -> str:
        parts = [f"{self.cfg.model.family} {self.kind}"]
        if self.sampler.name == "distill":
            parts.append(
                f"distilled ({self.sampler.steps} steps{', no CFG' if not self.sampler.cfg else ''})"
            )
        if self.cfg.model.moe:
            parts.append("two experts (high/low noise)")
        return ", ".join(parts)

    # -- the run --------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        self.memory.reset()
        if self.random:
            log.warning(RANDOM_WEIGHTS_WARNING)
        self.prepare()
        main = self.generate(self.plan.components, tag="")
        times = StageTimes(self.device)
        with times.stage("write_video"):
            write_mp4(main.frames, self.out / VIDEO_FILE, self.video.fps)
        main.times.update(times.seconds)
        main.times["total"] = round(time.perf_counter() - started, 4)
        memory = self.memory.peaks()  # before the reference run, which has its own footprint
        quality = self.reference_quality(main) if self.cfg.report.reference else None
        report = self.build_report(main, memory, quality)
        write_json_atomic(self.out / REPORT_FILE, report)
        tmp = self.out / f".{CONFIG_FILE}.tmp"
        tmp.write_text(OmegaConf.to_yaml(self.cfg, resolve=True))
        tmp.replace(self.out / CONFIG_FILE)
        for line in summary_lines(report):
            log.info(line)
        return self.result(report)

    def generate(self, plans: dict, tag: str) -> Generation:
        """Encode, denoise and decode once with the given component plans ({} = all unquantized)."""
        times = StageTimes(self.device)
        bar = tqdm(total=self._count_loads(plans), desc=f"{tag}loading models", unit="model")
        cond = self.encode(plans, times, bar)
        dits = self.load_dits(plans, times, bar)
        bar.close()
        schedule = self.sampler.schedule()
        noise = self.noise()
        calls: Counter[str] = Counter()
        experts: list[str] = []

        def velocity(x: torch.Tensor, t: float, i: int) -> torch.Tensor:
            name = self.expert_for(i, t)
            experts.append(name)
            dit = dits[name]
            tt = torch.tensor([t], dtype=torch.float32, device=self.device)
            xb = x[None]
            v = dit(xb, tt, cond.context, clip_fea=cond.clip_fea, y=cond.y)[0]
            calls[name] += 1
            if self.sampler.cfg:
                v_uncond = dit(xb, tt, cond.context_neg, clip_fea=cond.clip_fea, y=cond.y)[0]
                calls[name] += 1
                v = guide(v.float(), v_uncond.float(), self.sampler.scale_for(name != "dit.low_noise"))
            return v.float()

        with times.stage("denoise"), torch.no_grad():
            result = denoise(noise, schedule, self.sampler.solver, velocity, desc=f"{tag}denoising")
        self.release_dits(dits)
        dits.clear()  # drop the DITs before decoding
        self.free()
        with times.stage("decode"), torch.no_grad():
            video = self.vae.decode(result.latents[None].to(self.device))[0]
        frames = to_uint8_frames(video)
        return Generation(
            result.latents.cpu(), frames, result.step_times, experts, dict(calls), times.seconds
        )

    # -- pieces ---------------------------------------------------------------------------------------
    def _count_loads(self, plans: dict) -> int:
        """How many models generate() will build (for the loading progress bar)."""
        encoders = [
            c
            for c in ("t5", "clip")
            if c in self.plan.components and not (self._unquantized(plans, c) and c in self._cached)
        ]
        return len(encoders) + (self.vae is None) + (2 if self.cfg.model.moe else 1)

    @staticmethod
    def _unquantized(plans: dict, component: str) -> bool:
        plan = plans.get(component)
        return plan is None or plan.scheme is None

    def encode(self, plans: dict, times: StageTimes, bar: tqdm) -> Conditioning:
        """Text (and image) conditioning. Encoders are dropped as soon as they have run."""
        t5_plan = plans.get("t5")
        if self._unquantized(plans, "t5") and "t5" in self._cached:
            context, context_neg = self._cached["t5"]
        else:
            t5_device = torch.device("cpu") if self.cfg.offload.t5_cpu else self.device
            with times.stage("load_text_encoder"):
                encoder, info = comp.build_text_encoder(self.cfg, t5_plan, t5_device, self.random)
            bar.update(1)
            self.components.setdefault("t5", info)
            with times.stage("encode_text"):
                prompts = [str(self.cfg.prompt)]
                if self.sampler.cfg:
                    prompts.append(resolve_negative_prompt(self.cfg.negative_prompt, self.kind))
                embeddings = [e.to(self.device) for e in encoder.encode(prompts)]
            del encoder
            context, context_neg = [embeddings[0]], ([embeddings[1]] if self.sampler.cfg else None)
            if self._unquantized(plans, "t5"):
                self._cached["t5"] = (context, context_neg)
        if self.vae is None:
            with times.stage("load_vae"):
                self.vae, self.components["vae"] = comp.build_vae(self.cfg, self.device, self.random)
            bar.update(1)
        clip_fea, y = self.image_inputs(plans, times, bar)
        self.free()
        return Conditioning(context, context_neg, clip_fea, y)

    def offload_mode(self) -> tuple[str, str | None]:
        """(mode, granularity) that runs: validation's plan resolves offload=auto."""
        resolved = getattr(self.plan, "offload", None)
        if resolved is not None:
            return str(resolved.mode), getattr(resolved, "granularity", None)
        return str(self.cfg.offload.mode), None

    def load_dits(self, plans: dict, times: StageTimes, bar: tqdm) -> dict[str, Any]:
        """The DIT (or both Wan2.2 experts) on the device, or handed to the offload manager: built on the
        CPU (``disk``: on meta, its blocks read from the checkpoint as they are needed)."""
        names = ["dit.high_noise", "dit.low_noise"] if self.cfg.model.moe else ["dit"]
        mode, granularity = self.offload["mode"], self.offload["granularity"]
        build_device = {"none": self.device, "disk": torch.device("meta")}.get(mode, torch.device("cpu"))
        dits = {}
        for name in names:
            with times.stage("load_dit"):
                expert = name.split(".")[1] if "." in name else None
                model, info = comp.build_dit(
                    self.cfg, plans.get("dit"), build_device, self.random, expert, prepare=mode == "none",
                    compute_device=self.device,
                )
                info["speed"] = comp.configure_speed(model, self.cfg, self.device)
                if mode != "none":
                    model = comp.wrap_for_offload(
                        model,
                        self.cfg.offload,
                        self.device,
                        mode=mode,
                        granularity=granularity,
                        checkpoint=info.get("checkpoint"),
                    )
                    info["offload"] = mode
            self.components.setdefault(name, info)
            dits[name] = model
            bar.update(1)
        return dits

    def release_dits(self, dits: dict[str, Any]) -> None:
        """Offloaded DITs: record the manager's transfer statistics and give the GPU back before decoding."""
        for name, dit in dits.items():
            if callable(getattr(dit, "stats", None)):  # the measured run's, not the reference run's
                self.offload.setdefault("stats", {}).setdefault(name, dit.stats())
            if callable(getattr(dit, "end", None)):
                dit.end()

    def noise(self) -> torch.Tensor:
        """[16, F, H/8, W/8] float32, drawn on a CPU generator seeded with ``seed``: the same starting
        latents on every device (the official code draws on the CUDA generator)."""
        shape = self.video.latent_shape(16)
        gen = torch.Generator("cpu").manual_seed(int(self.cfg.seed))
        return torch.randn(shape, generator=gen, dtype=torch.float32).to(self.device)

    def expert_for(self, step: int, t: float) -> str:
        if not self.cfg.model.moe:
            return "dit"
        return "dit.high_noise" if self.sampler.high_noise(step, t) else "dit.low_noise"

    def free(self) -> None:
        """After a model is dropped: collect it and give its CUDA memory back, so the peak of the next
        stage does not include it (on the CPU, where a collection costs more than it saves, refcounting
        frees the tensors and close() collects once)."""
        if self.device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()

    def close(self) -> None:
        """Drop every model and cached tensor so that the next job in a sweep starts clean."""
        self.vae = None
        self._cached.clear()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- quality and report ---------------------------------------------------------------------------
    def reference_quality(self, main: Generation) -> dict[str, Any]:
        """Run again with every component unquantized (same seed, same inputs) and compare."""
        ref = self.generate({}, tag="reference: ")
        frames_q, frames_r = torch.from_numpy(main.frames), torch.from_numpy(ref.frames)
        return {
            "latent_rel_error": relative_error(main.latents, ref.latents),
            "psnr_db": psnr(frames_q, frames_r),
            "reference_times_s": ref.times,
            "reference_step_time_mean_s": sum(ref.step_times) / len(ref.step_times),
        }

    def build_report(self, main: Generation, memory: dict, quality: dict | None) -> dict[str, Any]:
        cfg = self.cfg
        schedule = self.sampler.schedule()
        report: dict[str, Any] = {
            "runner": self.label(),
            "model": {
                "name": cfg.model.name,
                "family": cfg.model.family,
                "task": cfg.model.task,
                "path": cfg.model.path,
                "dtype": cfg.model.dtype,
            },
            "random_weights": self.random,
            "warning": RANDOM_WEIGHTS_WARNING if self.random else None,
            "seed": int(cfg.seed),
            "noise": "torch.randn on a CPU generator seeded with `seed` (same on every device)",
            "prompt": cfg.prompt,
            "negative_prompt": resolve_negative_prompt(cfg.negative_prompt, self.kind)
            if self.sampler.cfg
            else None,
            "hardware": self.plan.hardware.label(),
            "device": str(self.device),
            "video": {
                "path": VIDEO_FILE,
                "frames": int(main.frames.shape[0]),
                "height": int(main.frames.shape[1]),
                "width": int(main.frames.shape[2]),
                "fps": self.video.fps,
                "codec": "h264 (yuv420p)",
            },
            "latent_shape": list(main.latents.shape),
            "sampler": self.sampler.summary()
            | {"model_timesteps": list(schedule.timesteps), "sigmas": list(schedule.sigmas)},
            "experts_per_step": main.experts if cfg.model.moe else None,
            "dit_calls": main.dit_calls,
            "components": self.components,
            "offload": self.offload,
            "times_s": main.times,
            "step_times_s": [round(s, 5) for s in main.step_times],
            "step_time_mean_s": sum(main.step_times) / len(main.step_times),
            "memory": memory,
            "weight_bytes_total": sum(c["weight_bytes"] for c in self.components.values()),
            "quality": quality,
            "notes": self.notes,
        }
        return report

    def result(self, report: dict[str, Any]) -> dict[str, Any]:
        """The compact part of the report that result.json and the sweep summary use."""
        keys = (
            "runner",
            "random_weights",
            "times_s",
            "step_time_mean_s",
            "memory",
            "weight_bytes_total",
            "quality",
            "video",
        )
        out = {k: report[k] for k in keys}
        out["components"] = {
            k: {"runs": v["runs"], "weight_bytes": v["weight_bytes"], "kernels_used": v["kernels_used"]}
            for k, v in report["components"].items()
        }
        out["report"] = REPORT_FILE
        return out
