"""The job behind run.py: validate the config against this machine, run the task's runner, report.

In a single run a configuration that cannot run exits with status 2 and one readable message. In a
sweep (`-m`) every job's failure is recorded in its result and the sweep goes on, so the summary covers
every job.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from lightx2v_quant.validate import ConfigError, validate

log = logging.getLogger("lightx2v_quant")

RESULT_FILE = "result.json"


def _hydra_context() -> tuple[Path, bool]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    return Path(hc.runtime.output_dir), hc.mode == RunMode.MULTIRUN


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary name beside ``path`` and rename it: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)


def run_from_hydra(cfg: DictConfig) -> dict[str, Any]:
    output_dir, multirun = _hydra_context()
    return run_job(cfg, output_dir, multirun=multirun)


def run_job(cfg: DictConfig, output_dir: Path, *, multirun: bool = False) -> dict[str, Any]:
    """Validate and run one job; return its result (also written to ``output_dir/result.json``)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    result: dict[str, Any] = {"status": "ok", "output_dir": str(output_dir)}
    try:
        plan = validate(cfg)
        for note in plan.notes:
            log.info(note)
        from runners import run_pipeline

        result.update(run_pipeline(cfg, plan, output_dir))
    except ConfigError as exc:
        result.update(status="invalid", error=str(exc))
        _finish(result, output_dir, started)
        if not multirun:
            print(str(exc), file=sys.stderr)
            sys.exit(2)
        log.error("%s", exc)
        return result
    except Exception as exc:  # a sweep records the failure and goes on; a single run re-raises
        result.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        _finish(result, output_dir, started)
        if not multirun:
            raise
        log.error("job failed: %s", result["error"])
        return result
    _finish(result, output_dir, started)
    return result


def _finish(result: dict[str, Any], output_dir: Path, started: float) -> None:
    result["wall_s"] = round(time.time() - started, 3)
    write_json_atomic(output_dir / RESULT_FILE, result)
