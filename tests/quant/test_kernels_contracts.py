"""The adapters against CPU stand-ins of their libraries (tests/quant/fake_gemm_libs.py).

The stand-ins enforce each library's documented contract (column-major B for CUTLASS, fp32 bias and an
explicit output dtype for Q8-Kernels, MN-major scales for DeepGEMM, vLLM's op schemas and Marlin's
scalar type) and compute from the quantized operands, so these tests check how each adapter calls its
library and that its re-layouts round-trip, on CPU. The real libraries are checked by the GPU tests.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch

from lightx2v_quant.quant import formats as qf
from lightx2v_quant.quant.kernels import _act_quant, _vllm_ops, get_kernel
from lightx2v_quant.quant.linear import QuantLinear
from tests.quant.fake_gemm_libs import FakeVllmOps, fake_deep_gemm, fake_q8_kernels, fake_sgl_kernel


def _rel_err(y: torch.Tensor, layer: QuantLinear, x: torch.Tensor) -> float:
    tensors = {"weight": layer.weight, "weight_scale": layer.weight_scale}
    bias = None if layer.bias is None else layer.bias.float()
    ref = layer.format.reference_linear(x.float(), tensors, bias, out_dtype=torch.float64)
    return float((y.double() - ref).norm() / ref.norm())


def _layer(scheme: str, n: int, k: int, bias: bool = True) -> QuantLinear:
    return QuantLinear.from_linear(torch.nn.Linear(k, n, bias=bias), scheme)


@pytest.fixture
def fake_vllm(monkeypatch):
    # Where the real ops are (or may get) loaded into this process, leave torch.ops._C to them.
    if (
        os.environ.get(_vllm_ops.ENV)
        or importlib.util.find_spec("vllm")
        or not _vllm_ops.missing_ops("cutlass_scaled_mm")
    ):
        pytest.skip("vLLM's real ops are available here: the GPU tests cover them")
    _vllm_ops.reset_cache()
    _act_quant.reset_cache()
    monkeypatch.setattr(_vllm_ops, "load", lambda: ("CPU stand-in of vLLM's ops (test)", None))
    for name in ("sglang.srt.layers.quantization.int8_kernel", "lightx2v_quant.quant.kernels.triton_ops"):
        monkeypatch.setitem(sys.modules, name, None)  # so vLLM's quantizers are the ones chosen
    with FakeVllmOps():
        yield
    _act_quant.reset_cache()
    _vllm_ops.reset_cache()


@pytest.fixture
def no_vllm(monkeypatch):
    _vllm_ops.reset_cache()
    _act_quant.reset_cache()
    monkeypatch.delenv(_vllm_ops.ENV, raising=False)
    for name in (
        "vllm",
        "vllm._custom_ops",
        "lightx2v_quant.quant.kernels.triton_ops",
        "sglang.srt.layers.quantization.int8_kernel",
    ):
        monkeypatch.setitem(sys.modules, name, None)
    yield
    _act_quant.reset_cache()
    _vllm_ops.reset_cache()


@pytest.mark.parametrize("scheme", ["fp8-vllm", "int8-vllm"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("m", [1, 33])
def test_vllm_calls(fake_vllm, scheme, dtype, m):
    layer = _layer(scheme, 48, 64)
    x = torch.randn(m, 64, dtype=dtype)
    y = layer(x)
    assert y.dtype == dtype and y.shape == (m, 48)
    assert _rel_err(y, layer, x) < 1e-2  # bf16 output rounding
    assert layer.weight.is_contiguous() and layer.k_scale_w.shape == (48, 1)
    assert "CPU stand-in" in layer.kernel.notes(layer.format.name)
    assert "vLLM dynamic_" in layer.kernel.notes(layer.format.name)


def test_vllm_fp8_support_comes_from_the_library(fake_vllm):
    from lightx2v_quant.hardware import HardwareSpec

    kernel = get_kernel("vllm")
    assert kernel.availability("w8a8-fp8-channel", HardwareSpec("H100", "cuda", (9, 0), 80)) == (True, "")


@pytest.mark.parametrize("k", [128, 512])  # one group (per-channel scale order) and four
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_marlin_calls_and_relayout_round_trips(fake_vllm, k, dtype):
    layer = _layer("int4-g128-marlin", 64, k)
    x = torch.randn(5, k, dtype=dtype)
    y = layer(x)
    assert y.dtype == dtype
    assert _rel_err(y, layer, x) < 1e-2  # 16-bit scales and output
    compute = dtype if dtype != torch.float32 else torch.bfloat16
    assert layer.k_marlin_s.dtype == compute and layer.k_marlin_bias.dtype == compute
    assert set(layer.state_dict()) == {"weight", "weight_scale", "bias"}
    assert "marlin_gemm" in layer.kernel.notes(layer.format.name)


def test_deepgemm_with_vllm_group_quantizer(fake_vllm, monkeypatch):
    monkeypatch.setitem(sys.modules, "deep_gemm", fake_deep_gemm())
    layer = _layer("fp8-b128-deepgemm", 192, 256)
    x = torch.randn(7, 256, dtype=torch.bfloat16)
    qx, sx = layer.kernel.quantize_input(layer, x)
    assert sx.shape == (7, 2) and sx.stride() == (1, 8)  # written MN-major, TMA-aligned, by the quantizer
    y = layer(x)
    assert y.dtype == torch.bfloat16 and _rel_err(y, layer, x) < 1e-2
    assert "per_token_group_fp8_quant" in layer.kernel.notes(layer.format.name)


def test_deepgemm_with_torch_quantizer_relayouts_scales(no_vllm, monkeypatch):
    monkeypatch.setitem(sys.modules, "deep_gemm", fake_deep_gemm())
    layer = _layer("fp8-b128-deepgemm", 128, 384, bias=False)
    x = torch.randn(3, 384, dtype=torch.float16)
    _, sx = layer.kernel.quantize_input(layer, x)
    assert sx.stride(0) == 1
    y = layer(x)
    assert y.dtype == torch.float16 and _rel_err(y, layer, x) < 1e-2


@pytest.mark.parametrize("scheme", ["fp8-sgl", "int8-sgl"])
def test_sgl_calls(no_vllm, monkeypatch, scheme):
    monkeypatch.setitem(sys.modules, "sgl_kernel", fake_sgl_kernel())
    layer = _layer(scheme, 48, 64)
    x = torch.randn(9, 64, dtype=torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16 and _rel_err(y, layer, x) < 1e-2
    expected = "sgl-kernel sgl_per_token_quant_fp8" if scheme == "fp8-sgl" else "PyTorch ops"
    assert expected in layer.kernel.notes(layer.format.name)


@pytest.mark.parametrize("scheme", ["fp8-q8f", "int8-q8f"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_q8f_calls(no_vllm, monkeypatch, scheme, dtype):
    for name, module in fake_q8_kernels().items():
        monkeypatch.setitem(sys.modules, name, module)
    layer = _layer(scheme, 128, 128)
    x = torch.randn(2, 3, 128, dtype=dtype)
    y = layer(x)
    assert y.shape == (2, 3, 128) and y.dtype == dtype
    assert _rel_err(y.reshape(6, 128), layer, x.reshape(6, 128)) < 1e-2
    assert layer.k_bias32.dtype == torch.float32


def test_prepare_again_after_a_new_load_drops_derived_buffers(fake_vllm):
    layer = _layer("int8-vllm", 48, 64)
    layer(torch.randn(2, 64, dtype=torch.float16))  # the fp32 bias is cast once to fp16 for the epilogue
    assert layer.k_bias.dtype == torch.float16
    fresh = qf.FORMATS["w8a8-int8-channel"].quantize_weight(torch.randn(48, 64))
    layer.load_quantized(fresh, torch.zeros(48))
    x = torch.randn(2, 64, dtype=torch.float16)
    y = layer(x)
    assert _rel_err(y, layer, x) < 1e-2  # the new weight and zero bias are used, not stale buffers
