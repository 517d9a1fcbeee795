"""Timing and reporting helpers for the GPU benchmarks (CUDA events, medians, JSON + markdown)."""

from __future__ import annotations

import json
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch


@dataclass
class Timing:
    median_ms: float  # GPU time per call (CUDA events), median over iterations
    p20_ms: float
    p80_ms: float
    host_ms: float  # CPU time to issue one call; above median_ms the eager call is launch-bound
    first_call_s: float  # first call incl. JIT compilation / autotuning
    iters: int


_CYCLES_PER_MS: list[float] = []


def _cycles_per_ms() -> float:
    """Calibrate torch.cuda._sleep (GPU clock cycles) once."""
    if not _CYCLES_PER_MS:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(10_000_000)
        end.record()
        torch.cuda.synchronize()
        _CYCLES_PER_MS.append(10_000_000 / max(start.elapsed_time(end), 1e-3))
    return _CYCLES_PER_MS[0]


def bench(
    fn: Callable[[int], Any],
    copies: int,
    *,
    target_s: float,
    min_iters: int = 5,
    max_iters: int = 100,
    device: str = "cuda",
) -> Timing:
    """Time ``fn(i)`` (i cycles over ``copies`` input/weight sets so caches do not flatter).

    On CUDA the GPU is first held busy with ``torch.cuda._sleep`` so the host can queue calls ahead: the
    events then measure GPU time per call rather than Python launch gaps (reported apart as host_ms).
    With ``device="cpu"`` (smoke tests only) a few wall-clock calls are timed instead.
    """
    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    fn(0)
    sync()
    first = time.perf_counter() - t0
    if not cuda:  # smoke runs: a few plain wall-clock calls
        times = []
        for j in range(min_iters):
            t0 = time.perf_counter()
            fn(j % copies)
            times.append((time.perf_counter() - t0) * 1e3)
        times.sort()
        return Timing(
            statistics.median(times), times[0], times[-1], statistics.median(times), first, min_iters
        )
    for i in range(1, min(copies, 3) + 1):  # warm the other copies, then estimate
        fn(i % copies)
    sync()
    t0 = time.perf_counter()
    for i in range(3):
        fn(i % copies)
    sync()
    est = max((time.perf_counter() - t0) / 3, 1e-6)
    iters = max(min_iters, min(max_iters, int(target_s / est)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    head_ms = min(iters * 0.4, 100.0)  # ~0.4 ms of head start per call
    for _ in range(3):
        # The GPU sleeps while the CPU queues every call, so each event pair times the GPU work alone.
        # If the queuing outlasted the sleep (launch-bound calls; the sleep's clock calibration can
        # also be off while the GPU clocks up), the GPU waited for launches: repeat with a longer sleep.
        slept = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        slept[0].record()
        torch.cuda._sleep(int(head_ms * _cycles_per_ms()))
        slept[1].record()
        t0 = time.perf_counter()
        for j in range(iters):
            starts[j].record()
            fn(j % copies)
            ends[j].record()
        host = (time.perf_counter() - t0) / iters
        torch.cuda.synchronize()
        if host * iters * 1e3 < slept[0].elapsed_time(slept[1]) or head_ms >= 2000.0:
            break
        head_ms = min(2000.0, 2.0 * host * iters * 1e3)
    times = sorted(s.elapsed_time(e) for s, e in zip(starts, ends))
    q = statistics.quantiles(times, n=5) if len(times) >= 5 else [times[0]] * 4
    return Timing(statistics.median(times), q[0], q[3], host * 1e3, first, iters)


@dataclass
class Report:
    """Everything a benchmark run writes: environment, scheme availability, results, skips."""

    device: str
    capability: str
    meta: dict[str, Any]
    schemes: dict[str, dict[str, Any]] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def write(self, out_dir: Path, stem: str, markdown: str) -> tuple[Path, Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r"[^A-Za-z0-9]+", "-", self.device).strip("-").lower()
        json_path = out_dir / f"{stem}_{slug}.json"
        md_path = out_dir / f"{stem}_{slug}.md"
        json_path.write_text(json.dumps(asdict(self), indent=1) + "\n")
        md_path.write_text(markdown)
        return json_path, md_path


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def timing_dict(t: Timing) -> dict[str, Any]:
    return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(t).items()}
