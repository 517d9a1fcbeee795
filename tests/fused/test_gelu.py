"""The fused GELU(tanh) + per-token quantization kernel vs the unfused path (F.gelu, then the format's
per-token quantization): the interpreter on the CPU, bit-exactness on CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.interp_util import run_cases

pytest.importorskip("triton")


def test_gelu_quantize_in_triton_interpreter():
    res = run_cases(Path(__file__).with_name("gelu_cases.py"))
    assert res["strided_mismatch"] == 0.0 and res["fake_shapes_wrong"] == 0.0, res
    assert res["compiled_mismatch"] == 0.0, res  # a custom op: fullgraph compiles around it
    for key, val in res.items():
        name = key.split(":", 1)[-1]
        if name == "gelu_mismatch":
            # The interpreter has no libdevice tanh: its exp-based tanh differs from PyTorch's CPU tanh in
            # the last fp32 bits, which decide the bf16 / fp16 rounding of ~0.3-0.4% of the values (where
            # 1 + tanh cancels, x << 0: tiny outputs). On CUDA both use __nv_tanhf (GPU test: exact).
            assert val < 1e-2, (key, val)
        elif name == "gelu_maxdiff":
            assert val < 2e-4, (key, val)  # one ulp of a tiny value (bf16) or of |y| < 0.5 (fp16)
        elif name.endswith("_mismatch"):
            assert val < 1e-3, (key, val)  # those GELU flips rarely change a quantized byte
        elif name.endswith("_scale_rel"):
            assert val < 1e-2, (key, val)  # at most one ulp of the row's absmax
        elif name.endswith("_deq_err"):
            assert val < 1e-3, (key, val)


def test_fused_ops_benchmark_smoke(tmp_path):
    """benchmarks/fused_ops.py end to end on a tiny shape in the interpreter: JSON with the device name."""
    import json
    import os
    import subprocess
    import sys

    from tests.interp_util import ROOT

    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    args = ["--device", "cpu", "--shapes", "3x260", "--norm-shapes", "3x260", "--target-s", "0"]
    args += ["--out", str(tmp_path)]
    cmd = [sys.executable, "benchmarks/fused_ops.py", *args]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rep = json.loads((tmp_path / "fused_ops_cpu.json").read_text())
    gelu = [r for r in rep["results"] if "quant" in r]
    norm = [r for r in rep["results"] if "d" in r]
    assert rep["device"] == "cpu" and [r["quant"] for r in gelu] == ["fp8", "int8"]
    assert all(r["bytes_equal"] and set(r["fused_ms_by_warps"]) == {"4", "8", "16"} for r in gelu)
    assert [(r["x"], r["out"]) for r in norm] == [
        (x, o) for x in ("float32", "bfloat16") for o in ("bf16", "fp8", "int8")
    ]
    assert all(
        r.get("new_equals_quantizer", True) and set(r["new_ms_by_warps"]) == {"2", "4", "8", "16"}
        for r in norm
    )
    assert (tmp_path / "fused_ops_cpu.md").exists()


def test_gelu_quantize_rejects_bad_inputs():
    from lightx2v_quant import fused

    h = torch.randn(2, 4, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="quant must be one of"):
        fused.gelu_quantize(h, "int4")
    with pytest.raises(ValueError, match="bf16 / fp16"):
        fused.gelu_quantize(h.float(), "fp8")
    with pytest.raises(ValueError, match="contiguous in its last dim"):
        fused.gelu_quantize(h.transpose(1, 2), "fp8")
    with pytest.raises(ValueError, match=r"\[B, L, F\] or \[L, F\]"):
        fused.gelu_quantize(h[0, 0], "fp8")


def test_gelu_quantize_reference_is_the_unfused_path():
    """The reference = nn.GELU(tanh) in bf16, then the format's own per-token quantization."""
    from lightx2v_quant import fused
    from lightx2v_quant.quant import formats as qf

    h = torch.randn(3, 5, 96, dtype=torch.bfloat16) * 2
    ref = fused.gelu_quantize_reference(h, "int8")
    y = torch.nn.GELU(approximate="tanh")(h)
    q, s = qf.FORMATS["w8a8-int8-channel"].quantize_activation(y.reshape(15, 96))
    assert torch.equal(ref.data.reshape(15, 96), q) and torch.equal(ref.scale.reshape(15, 1), s)
    assert ref.dtype == torch.bfloat16


# -- CUDA: bit-exact against the unfused path ------------------------------------------------------------
def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gelu_values_equal_torch_cuda(dtype):
    """The kernel's fp32 GELU rounded to bf16 / fp16 equals F.gelu(approximate="tanh") on 1M values."""
    from tests.fused.gelu_cases import gelu_mismatch

    res = gelu_mismatch("cuda", dtype)
    assert res["gelu_mismatch"] == 0.0, res


@pytest.mark.gpu
@pytest.mark.parametrize("quant", ["fp8", "int8"])
@pytest.mark.parametrize("shape", [(2, 333, 13824), (1, 8960), (1, 1, 5120), (3, 17000)])
def test_gelu_quantize_equals_unfused_cuda(quant, shape):
    """Same bytes and scales as the per-token quantizer QuantLinear runs on F.gelu's output (Wan-14B's
    13824, Wan-1.3B's 8960, M = 1, and a row past MAX_TILED_K for the two-sweep kernel)."""
    from lightx2v_quant import fused
    from lightx2v_quant.quant.activation import PER_TOKEN_FORMATS
    from lightx2v_quant.quant.kernels.triton_ops import quantize_per_token
    from tests.fused.gelu_cases import hidden

    h = hidden(shape, torch.bfloat16, "cuda")
    out = fused.gelu_quantize(h, quant)
    y = F.gelu(h, approximate="tanh")
    q, s = quantize_per_token(y.reshape(-1, shape[-1]), PER_TOKEN_FORMATS[quant])
    assert torch.equal(_bits(out.data.reshape(q.shape)), _bits(q))
    assert torch.equal(out.scale.reshape(s.shape), s)


@pytest.mark.gpu
@pytest.mark.parametrize("scheme", ["fp8-torch", "int8-torch", "fp8-triton", "int8-triton"])
def test_down_projection_on_fused_gelu_cuda(scheme):
    """A QuantLinear (the FFN's down projection) fed gelu_quantize(h) vs fed F.gelu(h)."""
    from torch import nn

    from lightx2v_quant import fused
    from lightx2v_quant.quant.linear import QuantLinear
    from tests.fused.gelu_cases import hidden

    g = torch.Generator().manual_seed(5)
    lin = nn.Linear(3456, 640, dtype=torch.bfloat16)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(640, 3456, generator=g) / 60)
    layer = QuantLinear.from_linear(lin, scheme).cuda()
    layer.prepare()
    fmt = layer.kernel.prequantized_input(layer)
    h = hidden((2, 300, 3456), torch.bfloat16, "cuda")
    with torch.no_grad():
        y_fused = layer(fused.gelu_quantize(h, fmt))
        y = layer(F.gelu(h, approximate="tanh"))
    if scheme.endswith("torch"):  # the same GEMM on the same bytes
        assert torch.equal(y_fused, y)
    else:  # the pre-quantized entry may tune another tile config than the quantize-and-multiply route
        assert float((y_fused.double() - y.double()).norm() / y.double().norm()) < 1e-3


@pytest.mark.gpu
def test_gelu_quantize_compiles_fullgraph_cuda():
    from tests.fused.gelu_cases import compile_case

    assert compile_case("cuda", "inductor")["compiled_mismatch"] == 0.0


@pytest.mark.gpu
@pytest.mark.parametrize("quant", ["fp8", "int8"])
def test_gelu_quantize_fast_tanh_cuda(quant):
    """``fast=True`` (tanh.approx.f32): the bf16 GELU may differ from F.gelu's in its last bit, so a few
    quantized codes move by one step and the per-token scales by at most a bf16 ulp."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from lightx2v_quant import fused

    g = torch.Generator("cuda").manual_seed(0)
    h = torch.randn(64, 13824, generator=g, device="cuda", dtype=torch.bfloat16) * 3
    exact, fast = fused.gelu_quantize(h, quant), fused.gelu_quantize(h, quant, fast=True)
    assert torch.allclose(fast.scale, exact.scale, rtol=2**-7, atol=0)
    a, b = fast.data.float(), exact.data.float()
    if quant == "int8":
        assert (a - b).abs().max().item() <= 1
    else:  # one fp8 e4m3 step is at most 1/8 of the value's power-of-two range
        assert torch.allclose(a, b, rtol=0.13, atol=2**-9)
    assert (a != b).double().mean().item() < 0.05
    y = F.gelu(h.float(), approximate="tanh")
    deq = fast.data.float() * fast.scale
    assert float((deq - y).norm() / y.norm()) < (0.03 if quant == "fp8" else 0.02)  # the formats' own error
