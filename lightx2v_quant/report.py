"""What a run measured: stage times, peak memory, quality against a reference, and the readable summary.

Peak CPU memory is the process's resident high-water mark (VmHWM), reset at the start of each job on
Linux so that a sweep's jobs are measured separately; where it cannot be reset the report says so.
"""

from __future__ import annotations

import re
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

RANDOM_WEIGHTS_WARNING = (
    "RANDOM WEIGHTS: model.path is null, so every component has seeded random weights. The video is noise "
    "and says nothing about quality; timings and memory are representative of the architecture only."
)


def gib(n: float | None) -> float | None:
    return None if n is None else round(n / 2**30, 3)


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StageTimes:
    """Wall-clock seconds per named stage; device work is synchronised before each clock read."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        sync(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            sync(self.device)
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 4)


def _vm_hwm_bytes() -> int | None:
    try:
        m = re.search(r"VmHWM:\s+(\d+)\s+kB", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(m.group(1)) * 1024 if m else None


class MemoryMonitor:
    """Peak GPU memory (torch allocator) and peak resident CPU memory for one job."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu_scope = "process"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        try:  # Linux: writing 5 to clear_refs resets this process's VmHWM
            Path("/proc/self/clear_refs").write_text("5")
            self.cpu_scope = "job"
        except OSError:
            self.cpu_scope = "process"

    def peaks(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.device.type == "cuda":
            out["gpu_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(self.device)
            out["gpu_peak_reserved_bytes"] = torch.cuda.max_memory_reserved(self.device)
        hwm = _vm_hwm_bytes()
        if hwm is None:  # ru_maxrss is KiB on Linux, bytes on macOS; it covers the process's lifetime
            hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.cpu_scope = "process"
        out["cpu_peak_rss_bytes"] = hwm
        out["cpu_peak_scope"] = (
            self.cpu_scope
        )  # "job": reset at job start; "process": since the process began
        return out


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """||value - reference|| / ||reference|| in float64."""
    a, b = value.double(), reference.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def psnr(value: torch.Tensor, reference: torch.Tensor, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB (inf when identical)."""
    mse = float(((value.double() - reference.double()) ** 2).mean())
    if mse == 0.0:
        return float("inf")
    return 10.0 * torch.log10(torch.tensor(peak**2 / mse, dtype=torch.float64)).item()


def _span(steps: list[int]) -> str:
    return str(steps[0]) if len(steps) == 1 else f"{steps[0]}-{steps[-1]}"


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A readable summary of a run's report for the log."""
    v, s, t, m = report["video"], report["sampler"], report["times_s"], report["memory"]
    head = f"model {report['model']['name']} ({report['model']['task']}) on {report['hardware']}, seed {report['seed']}"
    lines = [head]
    if report["random_weights"]:
        lines.append(RANDOM_WEIGHTS_WARNING)
    lines.append(f"video {v['frames']} frames {v['height']}x{v['width']} @ {v['fps']} fps -> {v['path']}")
    scale = f"on, scale {s['guide_scale']}" if s["cfg"] else "off"
    if s["cfg"] and s.get("guide_scale_low_noise") is not None:
        scale += f" (low-noise expert {s['guide_scale_low_noise']})"
    lines.append(f"sampler {s['name']} ({s['solver']}), {s['steps']} steps, shift {s['shift']}, cfg {scale}")
    width = max(len(n) for n in report["components"])
    for name, c in report["components"].items():
        kernels = (
            ", ".join(f"{k} x{n}" for k, n in c.get("kernels_used", {}).items()) or "no quantized layers"
        )
        lines.append(f"  {name:{width}s} {c['runs']:28s} {human_bytes(c['weight_bytes']):>11s}  [{kernels}]")
    experts = report.get("experts_per_step")
    if experts:
        runs = {name: [i for i, e in enumerate(experts) if e == name] for name in dict.fromkeys(experts)}
        lines.append("experts: " + ", ".join(f"{n} at steps {_span(s)}" for n, s in runs.items()))
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in t.items())
    lines.append(f"times: {stages}")
    if report.get("step_time_mean_s") is not None:
        lines.append(
            f"denoising step: mean {report['step_time_mean_s']:.4f}s over {len(report['step_times_s'])} steps"
        )
    mem = [f"CPU peak RSS {human_bytes(m.get('cpu_peak_rss_bytes'))} ({m.get('cpu_peak_scope')})"]
    if "gpu_peak_allocated_bytes" in m:
        mem.insert(
            0,
            f"GPU peak {human_bytes(m['gpu_peak_allocated_bytes'])} allocated, "
            f"{human_bytes(m['gpu_peak_reserved_bytes'])} reserved",
        )
    lines.append("memory: " + "; ".join(mem))
    q = report.get("quality")
    if q:
        lines.append(
            f"quality vs unquantized reference: latent relative error {q['latent_rel_error']:.4g}, "
            f"PSNR {q['psnr_db']:.2f} dB"
        )
    return lines
