"""The summary of benchmarks/triton_tune.py (targets, anchors, geomeans) on made-up rows, no GPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


def _report():
    spec = importlib.util.spec_from_file_location("triton_tune_report", BENCH_DIR / "triton_tune_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(shape, scheme, ratio, **extra):
    m, n, k = _report().SHAPES[shape]
    row = dict(
        shape=shape, scheme=scheme, m=m, n=n, k=k, ms=1.0, ratio=ratio, loop_ratio=ratio * 0.9, cpu_us=20.0,
        gemm_ratio=ratio * 1.1, rel_err=1e-3,
    )
    row.update(extra)
    return row


def test_summary_checks_targets_and_anchors(tmp_path):
    rep = _report()
    rows = [
        _row("14b-480p-qkvo", "fp8-triton", 1.60, quant_gbs=2800.0, quant_peak_pct=84.0, route="split"),
        _row("14b-480p-ffn-up", "fp8-triton", 1.80),
        _row("14b-480p-ffn-down", "fp8-triton", 1.60),
        _row("clip-fc1", "fp8-triton", 0.90),
    ]
    lines = rep.summarize(rows)
    text = "\n".join(lines)
    gm = (1.6 * 1.8 * 1.6) ** (1 / 3)
    assert f"geomean dit14b-480p fp8-triton: {gm:.3f}x" in text and "target 1.65: PASS" in text
    assert "AHEAD on every shape" in text  # 1.60 > 1.44, 1.80 > 1.61, 1.60 > 1.35
    assert "clip-fc1 fp8-triton: 0.90x" in text and "target 0.95: MISS" in text
    assert "| 14b-480p-qkvo | fp8-triton |" in text and "2800 (84%)" in text
    path = tmp_path / "r.md"
    rep.write_markdown(path, {"device": "fake"}, rows, lines)
    assert path.read_text().startswith("# Triton kernels") and "- geomean" in path.read_text()
