"""Sweep summary: a Hydra callback that writes summary.json, summary.md and summary.png into the sweep dir.

Registered by conf/hydra/callbacks/sweep_summary.yaml. Each job writes result.json in its own folder
(lightx2v_quant.app); at the end of the sweep the callback reads them all, so the summary covers every
job, including those that failed or were invalid, and it also works with launchers that run jobs in
other processes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lightx2v_quant.app import RESULT_FILE, write_json_atomic
from lightx2v_quant.report import gib

log = logging.getLogger("lightx2v_quant.sweep")

COLUMNS = [  # (key, markdown header)
    ("job", "#"),
    ("overrides", "overrides"),
    ("status", "status"),
    ("dit", "DIT"),
    ("t5", "T5"),
    ("clip", "CLIP"),
    ("total_s", "total s"),
    ("denoise_s", "denoise s"),
    ("step_s", "step s"),
    ("peak_gpu_gib", "peak GPU GiB"),
    ("peak_cpu_gib", "peak CPU GiB"),
    ("dit_weight_gib", "DIT weights GiB"),
    ("weight_gib", "all weights GiB"),
    ("latent_rel_error", "latent rel. err"),
    ("psnr_db", "PSNR dB"),
]


def summarize_job(num: int, overrides: list[str], result: dict[str, Any]) -> dict[str, Any]:
    """One summary row from a job's result.json."""
    comps = result.get("components") or {}
    dits = [v for k, v in comps.items() if k == "dit" or k.startswith("dit.")]  # Wan2.2: one per expert
    mem = result.get("memory") or {}
    times = result.get("times_s") or {}
    quality = result.get("quality") or {}
    error = result.get("error")
    return {
        "job": num,
        "overrides": ",".join(overrides) or "(defaults)",
        "status": result.get("status", "failed"),
        "dit": dits[0].get("runs") if dits else None,
        "t5": (comps.get("t5") or {}).get("runs"),
        "clip": (comps.get("clip") or {}).get("runs"),
        "total_s": times.get("total"),
        "denoise_s": times.get("denoise"),
        "step_s": result.get("step_time_mean_s"),
        "peak_gpu_gib": gib(mem.get("gpu_peak_allocated_bytes")),
        "peak_cpu_gib": gib(mem.get("cpu_peak_rss_bytes")),
        "dit_weight_gib": gib(sum(d.get("weight_bytes") or 0 for d in dits)) if dits else None,
        "weight_gib": gib(result.get("weight_bytes_total")),
        "latent_rel_error": quality.get("latent_rel_error"),
        "psnr_db": quality.get("psnr_db"),
        "error": error.splitlines()[0] if error else None,
        "error_full": error,
        "output_dir": result.get("output_dir"),
    }


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def markdown(rows: list[dict[str, Any]], title: str) -> str:
    ok = sum(r["status"] == "ok" for r in rows)
    lines = [f"# Sweep summary: {title}", "", f"{len(rows)} job(s), {ok} ok.", ""]
    lines.append("| " + " | ".join(h for _, h in COLUMNS) + " |")
    lines.append("|" + "---|" * len(COLUMNS))
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(k)) for k, _ in COLUMNS) + " |")
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        lines += ["", "## Failed or invalid jobs", ""]
        for r in failed:
            lines.append(f"### job {r['job']}: {r['overrides']} ({r['status']})")
            lines += ["", "```", (r.get("error_full") or "no error recorded").strip(), "```", ""]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Bars per job: step time, peak memory, weight bytes, and PSNR when measured (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gpu = any(r["peak_gpu_gib"] is not None for r in rows)
    panels = [
        ("step_s", "denoising step (s)"),
        ("peak_gpu_gib" if gpu else "peak_cpu_gib", f"peak {'GPU' if gpu else 'CPU'} memory (GiB)"),
        ("dit_weight_gib", "DIT weights (GiB)"),
    ]
    if any(r["psnr_db"] is not None for r in rows):
        panels.append(("psnr_db", "PSNR vs unquantized (dB)"))
    labels = [f"{r['job']}: {r['overrides']}" for r in rows]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.2 * len(panels), 0.5 * len(rows) + 1.8), squeeze=False
    )
    for ax, (key, title) in zip(axes[0], panels):
        values = [
            r[key] if isinstance(r[key], (int, float)) and r[key] != float("inf") else 0.0 for r in rows
        ]
        ypos = range(len(rows))
        ax.barh(ypos, values, color=["tab:blue" if r["status"] == "ok" else "tab:gray" for r in rows])
        for y, r in zip(ypos, rows):
            if r["status"] != "ok":
                ax.text(0, y, f" {r['status']}", va="center", color="tab:red")
        ax.set_yticks(list(ypos))
        ax.set_yticklabels(labels if ax is axes[0][0] else [""] * len(rows))
        ax.invert_yaxis()
        ax.set_title(title)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_summary(
    sweep_dir: Path, jobs: list[tuple[int, list[str], Path]], title: str = ""
) -> list[dict[str, Any]]:
    """Read each job's result.json and write summary.json / .md / .png into ``sweep_dir``."""
    rows = []
    for num, overrides, out_dir in sorted(jobs, key=lambda j: j[0]):
        result_path = out_dir / RESULT_FILE
        if result_path.is_file():
            result = json.loads(result_path.read_text())
        else:  # the job died before it could write its result (e.g. Hydra could not compose it)
            result = {"status": "failed", "error": "the job wrote no result.json", "output_dir": str(out_dir)}
        rows.append(summarize_job(num, overrides, result))
    write_json_atomic(sweep_dir / "summary.json", {"sweep_dir": str(sweep_dir), "jobs": rows})
    md = sweep_dir / "summary.md"
    tmp = md.with_name(".summary.md.tmp")
    tmp.write_text(markdown(rows, title or str(sweep_dir)))
    tmp.replace(md)
    if rows:
        try:
            plot(rows, sweep_dir / "summary.png")
        except ImportError as exc:  # matplotlib is optional; say so instead of failing the sweep
            log.warning("summary.png not written (%s); pip install -e '.[plot]'", exc)
    return rows


class SweepSummary(Callback):
    """Collects each job's folder in on_job_end and writes the summary in on_multirun_end."""

    def __init__(self) -> None:
        self.jobs: list[tuple[int, list[str], Path]] = []

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.jobs = []

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        hc = job_return.hydra_cfg.hydra
        num = OmegaConf.select(hc, "job.num", default=None)  # unset in a single run: nothing to collect
        if num is None:
            return
        self.jobs.append((int(num), list(job_return.overrides or []), Path(hc.runtime.output_dir)))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = self.jobs or _jobs_from_disk(sweep_dir)
        try:
            rows = write_summary(sweep_dir, jobs)
        except Exception:  # a summary problem must not hide the jobs' own results
            log.exception("could not write the sweep summary in %s", sweep_dir)
            return
        ok = sum(r["status"] == "ok" for r in rows)
        log.info("sweep summary: %d/%d jobs ok -> %s", ok, len(rows), sweep_dir / "summary.md")
        for r in rows:
            if r["status"] != "ok":
                log.warning("job %s (%s) %s: %s", r["job"], r["overrides"], r["status"], r["error"])


def _jobs_from_disk(sweep_dir: Path) -> list[tuple[int, list[str], Path]]:
    """Jobs run by another launcher (in other processes): their .hydra/overrides.yaml and result.json."""
    jobs = []
    for i, hydra_dir in enumerate(sorted(sweep_dir.glob("*/.hydra"))):
        ov = hydra_dir / "overrides.yaml"
        overrides = [str(o) for o in OmegaConf.load(ov)] if ov.is_file() else []
        prefix = hydra_dir.parent.name.split("_", 1)[0]  # subdir is <job num>_<overrides>
        jobs.append((int(prefix) if prefix.isdigit() else i, overrides, hydra_dir.parent))
    return jobs
