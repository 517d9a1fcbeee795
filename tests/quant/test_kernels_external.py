"""External GEMM adapters (vllm, sgl, q8f, torchao, marlin, deepgemm).

CPU: kernel selection (why each adapter can or cannot run: device, compute capability, library, shape),
the vLLM ops loader and its environment variable, the pure-PyTorch layout helpers, and torchao's int8
path (torchao runs on CPU). GPU (marked ``gpu``): numerics of every adapter against the format
reference, small M included; each test skips with the adapter's own reason where its library is absent.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

from lightx2v_quant.hardware import HardwareSpec
from lightx2v_quant.quant import formats as qf
from lightx2v_quant.quant.kernels import _act_quant, _vllm_ops, get_kernel
from lightx2v_quant.quant.kernels import _marlin_layout as ml
from lightx2v_quant.quant.kernels._adapter import Adapter
from lightx2v_quant.quant.linear import QuantLinear

FP8, INT8, INT4, B128 = "w8a8-fp8-channel", "w8a8-int8-channel", "w4a16-int4-g128", "w8a8-fp8-block128"
ADAPTERS = ("vllm", "sgl", "q8f", "torchao", "marlin", "deepgemm")

CPU = HardwareSpec("cpu", "cpu", None, 32.0)
T4 = HardwareSpec("T4", "cuda", (7, 5), 16.0)
A100 = HardwareSpec("A100", "cuda", (8, 0), 80.0)
L40S = HardwareSpec("L40S", "cuda", (8, 9), 48.0)
H100 = HardwareSpec("H100", "cuda", (9, 0), 80.0)


@pytest.fixture(autouse=True)
def _fresh_caches(monkeypatch):
    """Each test sees the environment it sets: no remembered load attempts or quantizer choices."""
    _vllm_ops.reset_cache()
    _act_quant.reset_cache()
    yield
    _vllm_ops.reset_cache()
    _act_quant.reset_cache()


def _block(monkeypatch, *modules: str) -> None:
    """Make ``import <module>`` fail as if the package were not installed."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def _no_vllm(monkeypatch) -> None:
    monkeypatch.delenv(_vllm_ops.ENV, raising=False)
    _block(monkeypatch, "vllm", "vllm._custom_ops")


# -- the registry sees every adapter ---------------------------------------------------------------
@pytest.mark.parametrize("name", ADAPTERS)
def test_adapter_module_loads_without_its_library(name):
    kernel = get_kernel(name)
    assert isinstance(kernel, Adapter) and kernel.name == name
    assert kernel.formats


# -- hardware --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, fmt, hw, expected",
    [
        ("vllm", FP8, CPU, "runs on cuda"),
        ("vllm", FP8, A100, "needs sm_89+"),
        ("vllm", INT8, T4, None),
        ("vllm", FP8, L40S, None),
        ("sgl", FP8, A100, "needs sm_89+"),
        ("sgl", INT8, CPU, "runs on cuda"),
        ("q8f", FP8, H100, "built for sm_89 only"),
        ("q8f", INT8, A100, "built for sm_89 only"),
        ("q8f", FP8, L40S, None),
        ("deepgemm", B128, L40S, "built for sm_90 only"),
        ("deepgemm", B128, H100, None),
        ("marlin", INT4, T4, "needs sm_80+"),
        ("marlin", INT4, A100, None),
        ("torchao", FP8, CPU, "CUDA sm_89+"),
        ("torchao", FP8, A100, "needs sm_89+"),
        ("torchao", INT8, CPU, None),
    ],
)
def test_hardware_problem(name, fmt, hw, expected):
    problem = get_kernel(name).hardware_problem(fmt, hw)
    if expected is None:
        assert problem is None
    else:
        assert expected in problem and name in problem


@pytest.mark.parametrize("name, fmt", [("marlin", FP8), ("deepgemm", FP8), ("vllm", INT4), ("torchao", B128)])
def test_unimplemented_format_is_named(name, fmt):
    ok, why = get_kernel(name).availability(fmt, H100)
    assert not ok and f"does not implement format {fmt}" in why


# -- libraries -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, fmt, hw, blocked, expected",
    [
        ("sgl", FP8, H100, ("sgl_kernel",), "pip install sgl-kernel"),
        (
            "q8f",
            FP8,
            L40S,
            ("q8_kernels", "q8_kernels.functional", "q8_kernels.functional.linear"),
            "q8_kernels",
        ),
        ("deepgemm", B128, H100, ("deep_gemm",), "DeepGEMM"),
        ("torchao", INT8, CPU, ("torchao",), "pip install torchao"),
    ],
)
def test_missing_library_is_named_with_install_hint(monkeypatch, name, fmt, hw, blocked, expected):
    _block(monkeypatch, *blocked)
    ok, why = get_kernel(name).availability(fmt, hw)
    assert not ok and expected in why


def test_library_without_the_needed_functions(monkeypatch):
    monkeypatch.setitem(sys.modules, "sgl_kernel", types.ModuleType("sgl_kernel"))
    assert (
        "lacks fp8_scaled_mm, int8_scaled_mm, sgl_per_token_quant_fp8" in get_kernel("sgl").library_problem()
    )
    monkeypatch.setitem(sys.modules, "deep_gemm", types.ModuleType("deep_gemm"))
    assert "neither fp8_gemm_nt nor gemm_fp8_fp8_bf16_nt" in get_kernel("deepgemm").library_problem()


def test_vllm_without_package_or_env_explains_both_routes(monkeypatch):
    _no_vllm(monkeypatch)
    ok, why = get_kernel("vllm").availability(FP8, H100)
    assert not ok
    assert "pip install vllm==0.33.0" in why
    assert f"{_vllm_ops.ENV}=/path/to/_C_stable_libtorch.abi3.so" in why


def test_vllm_env_var_to_missing_file(monkeypatch, tmp_path):
    missing = tmp_path / "nowhere" / "_C_stable_libtorch.abi3.so"
    monkeypatch.setenv(_vllm_ops.ENV, str(missing))
    why = get_kernel("vllm").library_problem()
    assert f"{_vllm_ops.ENV}={missing} names no file" in why
    # the variable is the only place looked at: no quiet switch to an installed package
    assert "pip install" not in why


def test_vllm_env_var_to_a_file_that_is_not_a_library(monkeypatch, tmp_path):
    bogus = tmp_path / "ops.so"
    bogus.write_bytes(b"not a shared library")
    monkeypatch.setenv(_vllm_ops.ENV, str(bogus))
    why = get_kernel("vllm").library_problem()
    assert f"{_vllm_ops.ENV}={bogus} could not be loaded" in why


def test_marlin_reports_both_backends(monkeypatch):
    _no_vllm(monkeypatch)
    _block(monkeypatch, "marlin")
    why = get_kernel("marlin").library_problem()
    assert _vllm_ops.ENV in why and "IST-DASLab" in why


def test_marlin_rejects_an_unrelated_marlin_package(monkeypatch):
    _no_vllm(monkeypatch)
    monkeypatch.setitem(sys.modules, "marlin", types.ModuleType("marlin"))
    assert "not IST-DASLab's Marlin" in get_kernel("marlin").library_problem()


# -- shapes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, fmt, n, k, expected",
    [
        ("vllm", FP8, 5120, 5120, None),
        ("vllm", FP8, 5120, 5128, "in_features % 16"),
        ("vllm", INT8, 72, 256, "out_features % 16"),
        ("sgl", INT8, 72, 256, None),
        ("sgl", INT8, 68, 256, "out_features % 8"),
        ("sgl", FP8, 72, 256, "out_features % 16"),
        ("q8f", FP8, 5120, 13824, None),
        ("q8f", FP8, 64, 5120, "out_features % 128"),  # Wan's head (5120 -> 64) does not fit
        ("q8f", INT8, 1280, 96, "in_features % 64"),
        ("torchao", INT8, 12, 256, "out_features % 8"),
        ("torchao", FP8, 5120, 1280, None),
        ("deepgemm", B128, 64, 5120, None),
        ("deepgemm", B128, 96, 5120, "out_features % 64"),
        ("deepgemm", B128, 128, 200, "in_features % 128"),  # the format itself refuses first
        ("marlin", INT4, 64, 5120, None),
        ("marlin", INT4, 96, 5120, "out_features % 64"),
        ("marlin", INT4, 128, 200, "in_features % 128"),
    ],
)
def test_shape_problem(monkeypatch, name, fmt, n, k, expected):
    _no_vllm(monkeypatch)
    _block(monkeypatch, "marlin")
    problem = get_kernel(name).shape_problem(qf.FORMATS[fmt], n, k)
    if expected is None:
        assert problem is None
    else:
        assert expected in problem


def test_marlin_shape_follows_the_standalone_package(monkeypatch):
    _no_vllm(monkeypatch)
    fake = types.ModuleType("marlin")
    fake.mul = lambda *args: None
    fake.Layer = object
    monkeypatch.setitem(sys.modules, "marlin", fake)
    kernel = get_kernel("marlin")
    assert kernel.library_problem() is None
    assert "out_features % 256" in kernel.shape_problem(qf.FORMATS[INT4], 5120 + 64, 5120)


# -- layout helpers ----------------------------------------------------------------------------------
def _gptq_slow(packed: torch.Tensor) -> torch.Tensor:
    """Independent GPTQ packing: value (stored +8) of row 8i+j, column n, in bits 4j of int32 (i, n)."""
    q = (qf.unpack_int4(packed).to(torch.int64) + 8).t()  # [K, N] in 0..15
    k, n = q.shape
    out = torch.zeros(k // 8, n, dtype=torch.int64)
    for j in range(8):
        out |= q[j::8] << (4 * j)
    return torch.where(out >= 2**31, out - 2**32, out).to(torch.int32)  # two's complement


def test_gptq_packing_matches_independent_definition():
    w = torch.randn(64, 256)
    packed = qf.FORMATS[INT4].quantize_weight(w)["weight"]
    got = ml.to_gptq(packed)
    assert got.shape == (256 // 8, 64) and got.dtype == torch.int32 and got.is_contiguous()
    assert torch.equal(got, _gptq_slow(packed))


def test_marlin_scale_orders_are_permutations():
    assert sorted(ml.GROUPED_PERM) == list(range(64))
    assert [ml.GROUPED_PERM[ml.GROUPED_PERM[i]] for i in range(64)] == list(range(64))  # 8x8 transpose
    assert sorted(ml.SINGLE_PERM) == list(range(32)) and ml.SINGLE_PERM[:8] == [0, 1, 8, 9, 16, 17, 24, 25]
    s = torch.arange(2 * 128, dtype=torch.float32).reshape(2, 128)
    p = ml.permute_scales(s)
    assert p.shape == s.shape and torch.equal(p.flatten().sort().values, s.flatten())
    assert torch.equal(p[0, :8], torch.tensor([0.0, 8, 16, 24, 32, 40, 48, 56]))
    single = ml.permute_scales(s[:1])  # one group (K == 128): the per-channel order
    assert torch.equal(single[0, :8], torch.tensor([0.0, 1, 8, 9, 16, 17, 24, 25]))
    assert torch.equal(ml.permute_bias(s[0]), single[0])


def test_uint4b8_id_matches_vllm():
    # vllm 0.33.0: vllm.scalar_type.scalar_types.uint4b8.id (NaN representation field = 1, at bit 50)
    assert ml.UINT4B8_ID == 1125899907892224


def test_tma_aligned_rows():
    assert [_act_quant.tma_aligned_rows(m) for m in (1, 4, 5, 32760)] == [4, 4, 8, 32760]


# -- activation quantizer choice ---------------------------------------------------------------------
def test_act_quant_takes_first_present_source(monkeypatch):
    _no_vllm(monkeypatch)
    calls = []

    def per_token_quant_int8(x):
        calls.append(x.shape)
        return qf.FORMATS[INT8].quantize_activation(x)

    fake = types.ModuleType("sglang.srt.layers.quantization.int8_kernel")
    fake.per_token_quant_int8 = per_token_quant_int8
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    chosen = _act_quant.choose(INT8, ("sglang", "vllm", "triton", "torch"))
    assert chosen.name == "sglang per_token_quant_int8"
    q, s = chosen(torch.randn(3, 64))
    assert q.dtype == torch.int8 and s.shape == (3, 1) and s.dtype == torch.float32 and calls == [(3, 64)]


def test_act_quant_ends_at_torch_reference(monkeypatch):
    _no_vllm(monkeypatch)
    _block(monkeypatch, "lightx2v_quant.quant.kernels.triton_ops")
    chosen = _act_quant.choose(FP8, ("vllm", "triton", "torch"))
    assert chosen.name.startswith("PyTorch ops")
    x = torch.randn(4, 128)
    ref_q, ref_s = qf.FORMATS[FP8].quantize_activation(x)
    q, s = chosen(x)
    assert torch.equal(q.float(), ref_q.float()) and torch.equal(s, ref_s)


def test_sgl_int8_notes_say_which_quantizer(monkeypatch):
    _no_vllm(monkeypatch)
    _block(
        monkeypatch, "sglang.srt.layers.quantization.int8_kernel", "lightx2v_quant.quant.kernels.triton_ops"
    )
    assert (
        get_kernel("sgl").notes(INT8)
        == f"activation quantization: {_act_quant.choose(INT8, ('torch',)).name}"
    )


# -- torchao on CPU ----------------------------------------------------------------------------------
def _torchao_or_skip():
    why = get_kernel("torchao").library_problem()
    if why:
        pytest.skip(why)


def _reference(layer: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    tensors = {"weight": layer.weight, "weight_scale": layer.weight_scale}
    bias = None if layer.bias is None else layer.bias.float()
    return layer.format.reference_linear(x.float(), tensors, bias, out_dtype=torch.float64)


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref.double()).norm() / ref.double().norm())


@pytest.mark.parametrize("m", [1, 16, 33])
@pytest.mark.parametrize("bias", [True, False])
def test_torchao_int8_cpu_matches_reference(m, bias):
    _torchao_or_skip()
    layer = QuantLinear.from_linear(torch.nn.Linear(256, 96, bias=bias), "int8-torchao")
    x = torch.randn(2, m, 256)
    y = layer(x)
    assert y.shape == (2, m, 96) and y.dtype == torch.float32
    assert _rel_err(y.reshape(-1, 96), _reference(layer, x.reshape(-1, 256))) < 1e-5


def test_torchao_int8_bf16_cpu():
    _torchao_or_skip()
    layer = QuantLinear.from_linear(torch.nn.Linear(512, 128).to(torch.bfloat16), "int8-torchao")
    x = torch.randn(40, 512, dtype=torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    assert _rel_err(y, _reference(layer, x)) < 1e-2  # torchao keeps bf16 activation scales


def test_torchao_int8_relayout_keeps_the_state_dict():
    _torchao_or_skip()
    layer = QuantLinear.from_linear(torch.nn.Linear(128, 64), "int8-torchao")
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    layer.prepare()
    assert layer.weight.shape == (64, 128) and layer.weight.t().is_contiguous()  # K-major storage
    after = layer.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    layer.prepare()  # idempotent
    assert layer.weight.t().is_contiguous()
    # a freshly loaded (row-major) weight is re-laid out on the next forward
    layer.load_quantized({"weight": before["weight"], "weight_scale": before["weight_scale"]}, before["bias"])
    y = layer(torch.randn(3, 128))
    assert layer.weight.t().is_contiguous() and y.shape == (3, 64)


# -- GPU numerics --------------------------------------------------------------------------------------
GPU_CASES = [  # (scheme, M, N, K); M = 1 / 16 are the time-embedding sizes
    *[
        (s, m, 256, 512)
        for s in (
            "fp8-vllm",
            "int8-vllm",
            "fp8-sgl",
            "int8-sgl",
            "fp8-torchao",
            "int8-torchao",
            "int4-g128-marlin",
            "fp8-b128-deepgemm",
        )
        for m in (1, 16, 33)
    ],
    *[(s, m, 256, 512) for s in ("fp8-q8f", "int8-q8f") for m in (1, 16, 33)],  # N % 128 holds
    *[
        (s, m, n, k)
        for s in (
            "fp8-vllm",
            "int8-vllm",
            "fp8-sgl",
            "int8-sgl",
            "fp8-q8f",
            "int8-q8f",
            "fp8-torchao",
            "int8-torchao",
            "int4-g128-marlin",
            "fp8-b128-deepgemm",
        )
        for (m, n, k) in ((257, 3840, 1280), (512, 10240, 4096), (2048, 5120, 13824))
    ],
]
TOLERANCE = {FP8: 2e-2, INT8: 2e-2, INT4: 1e-2, B128: 2e-2}


def _gpu_layer(scheme: str, n: int, k: int, dtype: torch.dtype, bias: bool = True) -> QuantLinear:
    from lightx2v_quant import hardware
    from lightx2v_quant.quant.schemes import get_scheme

    s = get_scheme(scheme)
    ok, why = get_kernel(s.kernel).availability(s.format, hardware.detect())
    if not ok:
        pytest.skip(why)
    linear = torch.nn.Linear(k, n, bias=bias, device="cuda", dtype=dtype)
    return QuantLinear.from_linear(linear, scheme)


@pytest.mark.gpu
@pytest.mark.parametrize("scheme, m, n, k", GPU_CASES)
def test_adapter_matches_reference_on_gpu(scheme, m, n, k):
    layer = _gpu_layer(scheme, n, k, torch.bfloat16)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    y = layer(x)
    assert y.shape == (m, n) and y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    assert _rel_err(y, _reference(layer, x)) < TOLERANCE[layer.format.name], layer.kernel.notes(
        layer.format.name
    )


@pytest.mark.gpu
@pytest.mark.parametrize(
    "scheme",
    [
        "fp8-vllm",
        "int8-vllm",
        "fp8-sgl",
        "int8-sgl",
        "fp8-torchao",
        "int8-torchao",
        "fp8-q8f",
        "int8-q8f",
        "int4-g128-marlin",
        "fp8-b128-deepgemm",
    ],
)
def test_adapter_fp16_and_no_bias_on_gpu(scheme):
    layer = _gpu_layer(scheme, 512, 1024, torch.float16, bias=False)
    x = torch.randn(3, 7, 1024, device="cuda", dtype=torch.float16)
    y = layer(x)
    assert y.shape == (3, 7, 512) and y.dtype == torch.float16
    assert _rel_err(y.reshape(-1, 512), _reference(layer, x.reshape(-1, 1024))) < TOLERANCE[layer.format.name]


@pytest.mark.gpu
@pytest.mark.parametrize("scheme", ["fp8-vllm", "int8-vllm", "fp8-sgl", "int8-sgl"])
def test_cutlass_adapters_read_the_weight_column_major(scheme):
    layer = _gpu_layer(scheme, 256, 512, torch.bfloat16)
    ptr = layer.weight.data_ptr()
    layer(torch.randn(4, 512, device="cuda", dtype=torch.bfloat16))
    assert layer.weight.t().stride(0) == 1 and layer.weight.data_ptr() == ptr  # a view: no copy was made


@pytest.mark.gpu
@pytest.mark.parametrize("order", [("vllm",), ("triton",), ("torch",)])
def test_deepgemm_with_each_activation_quantizer(monkeypatch, order):
    layer = _gpu_layer("fp8-b128-deepgemm", 512, 1024, torch.bfloat16)
    kernel = layer.kernel
    monkeypatch.setattr(kernel, "act_quant_order", {B128: order})
    found = _act_quant.SOURCES[order[0]](B128)
    if found is None:
        pytest.skip(f"activation quantizer source {order[0]!r} is not present here")
    x = torch.randn(37, 1024, device="cuda", dtype=torch.bfloat16)
    assert _rel_err(layer(x), _reference(layer, x)) < TOLERANCE[B128]


@pytest.mark.gpu
def test_marlin_single_group_and_fp32_input():
    layer = _gpu_layer("int4-g128-marlin", 128, 128, torch.bfloat16)  # K == 128: one group, per-channel order
    x = torch.randn(5, 128, device="cuda", dtype=torch.float32)
    y = layer(x)
    assert y.dtype == torch.float32 and _rel_err(y, _reference(layer, x)) < TOLERANCE[INT4]
