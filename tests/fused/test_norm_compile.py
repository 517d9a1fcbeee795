"""The LN + modulation (+ quantization) kernels build for sm_90 with the installed Triton, no GPU needed,
in the shape they were restructured for: x read once with 16-byte vector loads, one register layout
(no shared-memory shuffles between tiles), one cross-warp reduction per statistic, no spills.

The cases are ``fused.norm.SASS_CASES`` (Wan-14B's 5120 in fp32 and bf16, modulated and affine, 8-bit
and bf16 outputs, and the sweeping kernel), compiled as ``benchmarks/triton_sass.py`` compiles them.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

SASS = Path(__file__).resolve().parents[2] / "benchmarks" / "triton_sass.py"
N_CASES = 9


def _case(index: int):
    triton = pytest.importorskip("triton")
    if "nvidia" not in triton.backends.backends:
        pytest.skip("this Triton has no NVIDIA backend")
    from lightx2v_quant.fused import norm

    cases = list(norm.SASS_CASES())
    assert len(cases) == N_CASES  # keep the parametrization in step with SASS_CASES
    return norm, cases[index]


def _sass_module():
    spec = importlib.util.spec_from_file_location("triton_sass", SASS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("index", range(N_CASES))
def test_norm_kernel_builds_for_hopper(monkeypatch, index):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    norm, (name, fn, sig, const, opts, div16) = _case(index)
    sass = _sass_module()
    kernel = sass.compile_case(fn, dict(sig), dict(const), opts, 90, div16)
    ptx, ttgir = kernel.asm["ptx"], kernel.asm["ttgir"]
    assert "convert_layout" not in ttgir, name  # every tile and reduction in one register layout
    loads = re.findall(r"ld\.global[.\w]*", ptx)
    assert loads and all(".v4." in ld or ".v2." in ld for ld in loads), (name, loads)
    if fn is norm._norm_kernel:
        # x is read once: per thread one 16-byte vector per tile row, plus for each tile row the same
        # columns of scale and shift (fp32) or of weight and bias (their dtype), vectorized too
        elem = 4 if sig["x_ptr"] == "*fp32" else 2
        vec = 16 // elem
        assert const["G"] == vec * 32 * opts["num_warps"] and const["VEC"] == vec
        side = "scale_ptr" if const["MODULATE"] else "w_ptr"
        side_bytes = {"*fp32": 4, "*bf16": 2}[sig[side]] * vec
        rows = sum(const[r] for r in ("R0", "R1", "R2", "R3"))
        expected = rows * (1 + 2 * -(-side_bytes // 16))
        assert len(loads) == expected, (name, len(loads), expected)
    # mean and variance (+ the |max| when quantized): each ONE reduction across warps (<= 3 barriers)
    reductions = 2 + (const["QUANT"] != 0)
    assert ptx.count("bar.sync") <= 3 * reductions, (name, ptx.count("bar.sync"))
    report = sass.ptxas_report(ptx, 90)
    if report["regs"] is not None:  # the ptxas shipped with this Triton was found
        assert report["spill"] == 0 and report["stack"] == 0, (name, report)
