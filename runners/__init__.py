"""Task runners: assemble text encoder, image encoder, DIT(s) and VAE for a task and run the sampling loop.

``run_pipeline(cfg, plan, output_dir)`` picks the runner for ``cfg.model.task``: text-to-video
(``WanRunner``, also the 4-step distilled models and the Wan2.2 two-expert models) or image-to-video
(``I2VRunner``). Every job frees its models at the end, so a sweep's jobs do not add up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def make_runner(cfg: Any, plan: Any, output_dir: Path):
    from runners.base import WanRunner
    from runners.i2v import I2VRunner

    runners = {"t2v": WanRunner, "i2v": I2VRunner}
    task = str(cfg.model.task)
    if task not in runners:
        raise ValueError(f"model.task={task}: runners exist for {', '.join(runners)}")
    return runners[task](cfg, plan, output_dir)


def run_pipeline(cfg: Any, plan: Any, output_dir: Path) -> dict[str, Any]:
    """Run one job; the returned dict goes into result.json (report.json has the full report)."""
    runner = make_runner(cfg, plan, Path(output_dir))
    try:
        return runner.run()
    finally:
        runner.close()  # models, cached tensors, CUDA cache: the next job in a sweep starts clean
