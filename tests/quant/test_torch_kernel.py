"""The native `torch` kernel against the format references (CPU; the same checks on CUDA are marked gpu)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightx2v_quant.quant.apply import kernels_used, prepare_model, quantize_model, weight_bytes
from lightx2v_quant.quant.linear import QuantLinear

TORCH_SCHEMES = ["fp8-torch", "int8-torch", "int4-g128-torch", "fp8-b128-torch"]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def _check_against_reference(scheme: str, device: str, dtype: torch.dtype, m: int, n=384, k=512, tol=None):
    lin = nn.Linear(k, n, bias=True)
    layer = QuantLinear.from_linear(lin, scheme).to(device)
    x = torch.randn(m, k, device=device, dtype=dtype)
    y = layer(x)
    assert y.shape == (m, n) and y.dtype == dtype
    tensors = {"weight": layer.weight.cpu(), "weight_scale": layer.weight_scale.cpu()}
    ref = layer.format.reference_linear(x.cpu(), tensors, lin.bias.detach(), out_dtype=torch.float64)
    if tol is None:
        tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert _rel(y.cpu(), ref) < tol, scheme


@pytest.mark.parametrize("scheme", TORCH_SCHEMES)
@pytest.mark.parametrize("m", [1, 7, 64])
def test_torch_kernel_matches_reference_fp32(scheme, m):
    _check_against_reference(scheme, "cpu", torch.float32, m)


@pytest.mark.parametrize("scheme", TORCH_SCHEMES)
def test_torch_kernel_matches_reference_bf16(scheme):
    _check_against_reference(scheme, "cpu", torch.bfloat16, 33)


def test_int8_kernel_is_exact_in_integer_arithmetic():
    """int8 x int8 accumulated in int32 is exact: the kernel must equal the reference to fp32 rounding."""
    lin = nn.Linear(256, 256, bias=False)
    layer = QuantLinear.from_linear(lin, "int8-torch")
    x = torch.randn(9, 256)
    y = layer(x)
    tensors = {"weight": layer.weight, "weight_scale": layer.weight_scale}
    ref = layer.format.reference_linear(x, tensors, None, out_dtype=torch.float64)
    assert torch.allclose(y.double(), ref, rtol=1e-6, atol=1e-6)


def test_fast_accum_flag_is_kept():
    lin = nn.Linear(256, 256)
    layer = QuantLinear.from_linear(lin, "fp8-torch", fast_accum=True)
    assert layer.fast_accum
    assert layer(torch.randn(3, 256)).shape == (3, 256)  # on CPU the flag is ignored, result still right


def test_quantize_model_by_name_rule_and_report():
    model = nn.Sequential()
    model.add_module("attn", nn.Linear(256, 256))
    model.add_module("head", nn.Linear(256, 128))
    before = weight_bytes(model)
    names = quantize_model(model, "int8-torch", ["attn"])
    assert names == ["attn"]
    assert isinstance(model.attn, QuantLinear) and isinstance(model.head, nn.Linear)
    assert prepare_model(model) == 1
    assert kernels_used(model) == {"int8-torch via torch": 1}
    assert weight_bytes(model) < before
    # state dict keeps LightX2V's key names, none of the kernel's derived buffers
    assert set(model.attn.state_dict()) == {"weight", "weight_scale", "bias"}


def test_quantize_model_empty_shells_are_meta():
    model = nn.Sequential(nn.Linear(256, 256))
    quantize_model(model, "fp8-torch", ["0"], empty=True)
    assert model[0].weight.is_meta and model[0].weight.dtype == torch.float8_e4m3fn


def test_quantize_model_without_match_is_an_error():
    with pytest.raises(ValueError, match="no nn.Linear"):
        quantize_model(nn.Sequential(nn.Linear(256, 256)), "int8-torch", ["blocks.*.q"])


def test_shape_the_format_cannot_hold_is_an_error():
    with pytest.raises(ValueError, match="in_features % 128"):
        QuantLinear.from_linear(nn.Linear(200, 256), "int4-g128-torch")


# --- the same on an H100 (run there before calling GPU work done) ------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("scheme", TORCH_SCHEMES)
@pytest.mark.parametrize("m", [1, 16, 17, 300])
def test_torch_kernel_matches_reference_cuda(scheme, m):
    if scheme in ("fp8-torch", "fp8-b128-torch") and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs sm_89+")
    _check_against_reference(scheme, "cuda", torch.bfloat16, m, n=5120, k=5120)


@pytest.mark.gpu
def test_fp8_torch_cuda_matches_reference_fp32_out():
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs sm_89+")
    _check_against_reference("fp8-torch", "cuda", torch.float32, 64, tol=1e-2)
