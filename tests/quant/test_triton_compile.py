"""The one-launch quantize+GEMM kernel compiles for sm_90 with the installed Triton, no GPU needed.

The interpreter tests run its loops as Python and never type-check them; this builds the real PTX
(benchmarks/probes/compile_sm90.py, a few seconds) for two tiles: the 64-row wgmma one CLIP takes, and
a 16-row mma.sync one with a ragged K and no bias (the small-M path).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

PROBE = Path(__file__).resolve().parents[2] / "benchmarks" / "probes" / "compile_sm90.py"


def _probe():
    triton = pytest.importorskip("triton")
    if "nvidia" not in triton.backends.backends:
        pytest.skip("this Triton has no NVIDIA backend")
    spec = importlib.util.spec_from_file_location("compile_sm90", PROBE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "block_m,block_n,warps,stages,fmt,has_bias,even_k",
    [(64, 128, 4, 3, "fp8", True, True), (16, 64, 4, 3, "int8", False, False)],
)
def test_fused_kernel_builds_for_hopper(monkeypatch, block_m, block_n, warps, stages, fmt, has_bias, even_k):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    probe = _probe()
    cfg = probe.tf.TileConfig(block_m, block_n, 128, warps, stages, fused=True)
    assert cfg in probe.fused_configs()  # a tile Hopper is really offered
    row = probe.compile_one(cfg, fmt, "bf16", "bf16", has_bias, even_k)
    assert "error" not in row, row["error"]
    assert "problems" not in row, row["problems"]  # tensor-core instruction, no spills, fits smem
    assert row["sync_x_loads"] == 0 and row["cp_async"] > 0  # the |max| sweep and main loop pipelined
