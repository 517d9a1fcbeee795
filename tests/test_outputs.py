"""Run outputs: the mp4 writer, report helpers and the sweep summary (from result.json files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lightx2v_quant.report import MemoryMonitor, human_bytes, psnr, relative_error
from lightx2v_quant.sweep import write_summary
from lightx2v_quant.video import to_uint8_frames, write_mp4


def test_mp4_round_trip(tmp_path):
    import imageio.v2 as imageio

    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 48), indexing="ij")
    video = torch.stack(
        [torch.stack([xx * (t + 1) / 5, yy, -xx]) for t in range(5)], dim=1
    )  # smooth [3,5,32,48]
    frames = to_uint8_frames(video)
    assert frames.shape == (5, 32, 48, 3) and frames.dtype == np.uint8
    path = write_mp4(frames, tmp_path / "video.mp4", fps=16)
    assert path.is_file() and not list(tmp_path.glob(".*"))  # no temporary file left behind
    meta = imageio.get_reader(path).get_meta_data()
    back = np.stack(imageio.mimread(path, memtest=False))
    assert meta["codec"] == "h264" and meta["fps"] == 16
    assert back.shape == frames.shape
    assert np.abs(back.astype(float) - frames).mean() < 4  # lossy, but the same picture


def test_mp4_rejects_odd_sizes(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_mp4(np.zeros((2, 31, 32, 3), np.uint8), tmp_path / "v.mp4", fps=8)


def test_quality_metrics():
    a = torch.ones(10)
    assert relative_error(a * 1.01, a) == pytest.approx(0.01)
    assert psnr(torch.zeros(4), torch.zeros(4)) == float("inf")
    assert psnr(torch.full((4,), 255.0), torch.zeros(4)) == pytest.approx(0.0)
    assert human_bytes(3 * 2**30) == "3.00 GiB"


def test_cpu_peak_memory_is_per_job():
    mon = MemoryMonitor(torch.device("cpu"))
    mon.reset()
    before = mon.peaks()["cpu_peak_rss_bytes"]
    big = torch.ones(64 * 2**20, dtype=torch.uint8)  # 64 MiB touched
    after = mon.peaks()["cpu_peak_rss_bytes"]
    del big
    assert after >= before
    if mon.cpu_scope == "job":
        assert after - before >= 32 * 2**20


def _job(tmp: Path, num: int, name: str, result: dict) -> tuple[int, list[str], Path]:
    out = tmp / f"{num}_{name}"
    out.mkdir()
    (out / "result.json").write_text(json.dumps(result))
    return num, [name], out


def test_summary_from_results(tmp_path):
    ok = {
        "status": "ok",
        "times_s": {"total": 1.5, "denoise": 1.0},
        "step_time_mean_s": 0.1,
        "memory": {"cpu_peak_rss_bytes": 2**30},
        "weight_bytes_total": 2**29,
        "components": {"dit": {"runs": "int8-torch via torch", "weight_bytes": 2**28}},
        "quality": {"latent_rel_error": 0.02, "psnr_db": 35.0},
    }
    bad = {"status": "invalid", "error": "This configuration cannot run:\n  - dit_quant=fp8-sgl: needs CUDA"}
    jobs = [_job(tmp_path, 0, "dit_quant=int8-torch", ok), _job(tmp_path, 1, "dit_quant=fp8-sgl", bad)]
    jobs.append((2, ["dit_quant=none"], tmp_path / "2_missing"))  # died before writing result.json
    rows = write_summary(tmp_path, jobs)
    assert [r["status"] for r in rows] == ["ok", "invalid", "failed"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["jobs"]) == 3 and summary["jobs"][0]["dit"] == "int8-torch via torch"
    assert summary["jobs"][0]["psnr_db"] == 35.0 and summary["jobs"][0]["dit_weight_gib"] == 0.25
    md = (tmp_path / "summary.md").read_text()
    assert md.count("\n| ") == 4  # header + 3 rows
    assert "needs CUDA" in md and "wrote no result.json" in md
    assert (tmp_path / "summary.png").stat().st_size > 1000
