"""Our Triton kernels under Triton's CPU interpreter, against the format references.

Needs TRITON_INTERPRET=1 in the environment *before* Triton kernels are defined, so this file is not
collected by a plain `pytest` run (its name lacks the test_ prefix): `test_triton.py` runs it in a
subprocess. Directly: TRITON_INTERPRET=1 python -m pytest tests/quant/triton_interp_cases.py

Quantizers are bit-exact. GEMMs see the same quantized inputs as the reference, so with fp32 output they
differ only by fp32 accumulation order (rel ~1e-7). The interpreter's fp32 -> bf16 cast truncates where
the GPU rounds, hence the looser bf16 tolerance.
"""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("run with TRITON_INTERPRET=1 (see module docstring)", allow_module_level=True)
triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from lightx2v_quant.hardware import HardwareSpec  # noqa: E402
from lightx2v_quant.quant import formats as qf  # noqa: E402
from lightx2v_quant.quant.kernels import get_kernel  # noqa: E402
from lightx2v_quant.quant.kernels import triton_linear as L  # noqa: E402
from lightx2v_quant.quant.kernels import triton_ops as T  # noqa: E402
from lightx2v_quant.quant.kernels.triton_tuning import SPLIT, QuantConfig, TileConfig  # noqa: E402
from lightx2v_quant.quant.linear import QuantLinear  # noqa: E402

FP8, INT8, INT4, B128 = "w8a8-fp8-channel", "w8a8-int8-channel", "w4a16-int4-g128", "w8a8-fp8-block128"
INTERPRETER_BROKEN = (
    "this Triton's interpreter cannot run loops with run-time bounds (Triton 3.6 with NumPy >= 2.4)"
)


@triton.jit
def _loop_probe(out_ptr, n):
    acc = 0.0
    for _ in range(0, n):
        acc += 1.0
    tl.store(out_ptr, acc)


def _interpreter_runs_loops() -> bool:
    out = torch.zeros(1)
    try:
        _loop_probe[(1,)](out, 3)
    except Exception as exc:  # noqa: BLE001 - only the known interpreter failure is tolerated
        if "0-dimensional arrays" in repr(exc):
            return False
        raise
    return out.item() == 3.0


if not _interpreter_runs_loops():
    pytest.skip(INTERPRETER_BROKEN, allow_module_level=True)
CPU = HardwareSpec(name="cpu", device="cpu", compute_capability=None, memory_gb=8.0)


@pytest.fixture(autouse=True)
def _poison_empty():
    """torch.empty returns NaN / int-max filled memory: an output element the kernel skips shows up."""
    old = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.utils.deterministic.fill_uninitialized_memory,
    )
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(old[0], warn_only=old[1])
    torch.utils.deterministic.fill_uninitialized_memory = old[2]


def rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    y, ref = y.double(), ref.double()
    assert torch.isfinite(y).all(), "output has NaN/inf (unwritten or overflowed elements)"
    return ((y - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def activations(m: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    """Rows of very different magnitudes, one all-zero row, a few outliers."""
    x = torch.randn(m, k) * torch.logspace(-3, 2, m).unsqueeze(1)
    x[0, : min(k, 7)] *= 40.0
    if m > 2:
        x[m // 2] = 0.0
    return x.to(dtype)


# -- quantizers: bit-exact ---------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", [FP8, INT8])
@pytest.mark.parametrize("m,k", [(1, 128), (5, 200), (17, 1024), (64, 256), (3, 16400)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_quantize_per_token_exact(fmt, m, k, dtype):
    x = activations(m, k, dtype)
    q, s = T.quantize_per_token(x, fmt)
    q_ref, s_ref = qf.FORMATS[fmt].quantize_activation(x)
    assert s.shape == (m, 1) and s.dtype == torch.float32
    assert same_bits(s, s_ref)
    assert same_bits(q, q_ref)


@pytest.mark.parametrize("fmt", [FP8, INT8])
@pytest.mark.parametrize(
    "k,warps",
    [
        (1280, 1),  # tiles of 4 + 1 rows of 256
        (1792, 1),  # 4 + 2 + 1
        (7936, 1),  # 31 rows: 16 + 8 + 4 + 4 (the fourth rounded up, masked)
        (5000, 2),  # masked tail
        (13824, 8),  # Wan's ffn-down row: 4 + 2 + 1 rows of 2048, masked
        (16400, 4),  # past the one-pass limit: two sweeps
    ],
)
def test_quantize_per_token_tile_shapes(fmt, k, warps):
    for dtype in (torch.bfloat16, torch.float32):
        x = activations(3, k, dtype)
        x[1, ::7] = -0.0  # signed zeros keep their sign in fp8
        q, s = T.quantize_per_token(x, fmt, config=QuantConfig(warps))
        q_ref, s_ref = qf.FORMATS[fmt].quantize_activation(x)
        assert same_bits(s, s_ref) and same_bits(q, q_ref), (k, warps, dtype)


def test_int8_ties_round_half_even():
    # amax 127 -> scale exactly 1.0, so x / scale lands on .5 ties
    x = torch.tensor([[127.0, 2.5, 3.5, -2.5, -3.5, 0.5, -0.5, 126.5]])
    q, s = T.quantize_per_token(x, INT8)
    assert s.item() == 1.0
    assert q.tolist() == [[127, 2, 4, -2, -4, 0, 0, 126]]


def test_fp8_rounding_carries_into_next_binade():
    # values just under a power of two round up to it (the interpreter's own cast gets these wrong)
    x = torch.tensor([[448.0, 7.9, 15.8, 31.7, 125.5, -63.9, 0.0019, 1e-9]])
    q, _ = T.quantize_per_token(x, FP8)
    q_ref, _ = qf.FORMATS[FP8].quantize_activation(x)
    assert same_bits(q, q_ref)


@pytest.mark.parametrize("m,k", [(1, 128), (5, 256), (33, 384)])
def test_quantize_per_token_group_exact(m, k):
    x = activations(m, k, torch.bfloat16)
    q, s = T.quantize_per_token_group(x)
    q_ref, s_ref = qf.FORMATS[B128].quantize_activation(x)
    assert same_bits(q, q_ref)
    assert torch.equal(s, s_ref)


# -- GEMMs ---------------------------------------------------------------------------------------------
SHAPES = [(1, 128, 128), (5, 72, 200), (17, 256, 384), (64, 128, 256)]
CONFIGS = {
    "default": None,
    "ptr-small": TileConfig(16, 32, 32, 4, 2),
    "ptr-k128": TileConfig(16, 16, 128, 4, 2),  # masked K tail when K % 128 != 0
    "tma": TileConfig(32, 64, 64, 4, 2, tma=True),
    "tma-subtile": TileConfig(32, 64, 64, 4, 2, tma=True, subtile=True),
    "n256": TileConfig(16, 256, 128, 4, 2),  # block-128: a tile spanning two weight blocks
}


def _quantized_problem(fmt_name: str, m: int, n: int, k: int, x_dtype=torch.float32):
    fmt = qf.FORMATS[fmt_name]
    tensors = fmt.quantize_weight(torch.randn(n, k) * 0.05)
    x = activations(m, k, x_dtype)
    bias = torch.randn(n)
    return fmt, tensors, x, bias


@pytest.mark.parametrize("fmt_name", [FP8, INT8])
@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("cfg", list(CONFIGS))
def test_w8a8_matmul_matches_reference(fmt_name, m, n, k, cfg):
    if CONFIGS[cfg] is not None and CONFIGS[cfg].tma and (k % 16 or n % 4):
        with pytest.raises(ValueError, match="TMA config needs"):
            _run_w8a8(fmt_name, m, n, k, CONFIGS[cfg])
        return
    _run_w8a8(fmt_name, m, n, k, CONFIGS[cfg])


def _run_w8a8(fmt_name, m, n, k, config):
    fmt, t, x, bias = _quantized_problem(fmt_name, m, n, k)
    q, s = T.quantize_per_token(x, fmt_name)
    y = T.w8a8_matmul(q, s, t["weight"], t["weight_scale"], bias, torch.float32, config=config)
    ref = fmt.reference_linear(x, t, bias, torch.float32)
    assert y.shape == (m, n) and y.dtype == torch.float32
    assert rel(y, ref) < 1e-6


def _selection_weight(fmt_name: str, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """W [N, K] with a single 1 per row (at column n % K) and unit scales: y[m, n] = q[m, n % K] *
    scale[m] (+ bias) with one nonzero product per output, exact in any summation order. So an output
    shows the quantized activation and its scale themselves, whatever the tiles."""
    w = torch.zeros(n, k)
    w[torch.arange(n), torch.arange(n) % k] = 1.0
    return w.to(qf.FORMATS[fmt_name].weight_dtype), torch.ones(n)


FUSED_ROUTES = [TileConfig(16, 32, 64, 4, 2, fused=True), TileConfig(32, 64, 128, 4, 2, fused=True)]
EDGE_SHAPES = [(1, 64, 128), (5, 72, 200), (33, 40, 96)]  # M = 1; M, N, K off every block size


@pytest.mark.parametrize("fmt_name", [FP8, INT8])
@pytest.mark.parametrize("m,n,k", EDGE_SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("with_bias", [True, False])
def test_fused_quantizes_exactly_as_the_reference(fmt_name, m, n, k, dtype, with_bias):
    """Through a selection weight, the fused kernel's quantized values and scales (and epilogue) equal the
    reference's bit for bit, and equal the unfused path's: the same q, the same scales."""
    fmt = qf.FORMATS[fmt_name]
    x = activations(m, k, dtype)
    x[-1, ::5] = -0.0  # signed zeros: no output sees their sign (acc starts at +0)
    w, w_scale = _selection_weight(fmt_name, n, k)
    bias = torch.randn(n).to(dtype) if with_bias else None
    q, s = fmt.quantize_activation(x)  # the reference: [M, K], [M, 1]
    want = (q.float()[:, torch.arange(n) % k] + 0.0) * s * w_scale
    if with_bias:
        want = want + bias.float()
    unfused = torch.empty((m, n), dtype=torch.float32)
    L.launch_linear_w8a8(x, fmt_name, w, w_scale, bias, unfused, route=SPLIT)
    assert same_bits(unfused, want)
    for route in FUSED_ROUTES:
        fused = torch.empty((m, n), dtype=torch.float32)
        assert len(L.launch_linear_w8a8(x, fmt_name, w, w_scale, bias, fused, route=route)) == 1
        assert same_bits(fused, want), route.label()


@pytest.mark.parametrize("fmt_name", [FP8, INT8])
@pytest.mark.parametrize("m,n,k", EDGE_SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_random_weights_match_unfused(fmt_name, m, n, k, dtype):
    """Random weights, output in the input dtype: int8 sums exactly (same bits); the interpreter adds fp8
    products in fp32 in tile order, so there the tiles' different K splits leave rounding differences."""
    fmt, t, _, _ = _quantized_problem(fmt_name, m, n, k)
    x = activations(m, k, dtype)
    bias = torch.randn(n).to(dtype)
    w_scale = t["weight_scale"].reshape(-1).contiguous()
    unfused = torch.empty((m, n), dtype=dtype)
    L.launch_linear_w8a8(x, fmt_name, t["weight"], w_scale, bias, unfused, route=SPLIT)
    ref = fmt.reference_linear(x, t, bias, torch.float32)
    for route in FUSED_ROUTES:
        fused = torch.empty((m, n), dtype=dtype)
        L.launch_linear_w8a8(x, fmt_name, t["weight"], w_scale, bias, fused, route=route)
        if fmt_name == INT8:
            assert same_bits(fused, unfused), route.label()
        else:
            assert rel(fused, unfused) < 1e-5, route.label()  # fp32 sums, then one rounding to 16 bits
        assert rel(fused, ref) < 1e-2, route.label()


def test_route_rule_dispatch(monkeypatch):
    """Without a route: the size rule's choice (one launch where it holds, quantizer + GEMM elsewhere);
    LIGHTX2V_QUANT_TRITON_ROUTE forces either."""
    from lightx2v_quant.quant.kernels import triton_fused as F

    _, t, x, bias = _quantized_problem(INT8, 65, 40, 96, torch.bfloat16)
    w_scale = t["weight_scale"].reshape(-1).contiguous()
    ys = {}
    for limit, mode, launches in [
        (None, "auto", 2),  # M = 65 > FUSE_AUTO_MAX_M: quantizer + GEMM
        (65, "auto", 1),  # the rule admits 65 rows: one launch (the interpreter's single candidate)
        (None, "fused", 1),
        (None, "split", 2),
    ]:
        if limit is not None:
            monkeypatch.setattr(F, "FUSE_AUTO_MAX_M", limit)
        monkeypatch.setenv("LIGHTX2V_QUANT_TRITON_ROUTE", mode)
        y = torch.empty((65, 40), dtype=torch.float32)
        assert len(L.launch_linear_w8a8(x, INT8, t["weight"], w_scale, bias, y)) == launches, (limit, mode)
        ys[(limit, mode)] = y
        monkeypatch.undo()
    first = next(iter(ys.values()))
    assert all(same_bits(y, first) for y in ys.values())
    monkeypatch.setenv("LIGHTX2V_QUANT_TRITON_ROUTE", "fast")
    with pytest.raises(ValueError, match="LIGHTX2V_QUANT_TRITON_ROUTE must be one of"):
        L.launch_linear_w8a8(x, INT8, t["weight"], w_scale, bias, y)


@pytest.mark.parametrize("m,n,k", [(1, 128, 128), (17, 256, 384), (64, 200, 256)])
@pytest.mark.parametrize("cfg", ["default", "ptr-small", "tma", "n256"])
def test_fp8_block_matmul_matches_reference(m, n, k, cfg):
    fmt, t, x, bias = _quantized_problem(B128, m, n, k)
    q, s = T.quantize_per_token_group(x)
    y = T.fp8_block_matmul(q, s, t["weight"], t["weight_scale"], bias, torch.float32, config=CONFIGS[cfg])
    assert rel(y, fmt.reference_linear(x, t, bias, torch.float32)) < 1e-6


@pytest.mark.parametrize("m,n,k", [(1, 128, 128), (5, 72, 256), (17, 256, 384)])
@pytest.mark.parametrize(
    "x_dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 8e-3), (torch.float16, 1e-3)]
)
@pytest.mark.parametrize("cfg", [None, TileConfig(16, 32, 128, 4, 2)])
def test_w4a16_matmul_matches_reference(m, n, k, x_dtype, tol, cfg):
    fmt, t, x, bias = _quantized_problem(INT4, m, n, k, x_dtype)
    y = T.w4a16_matmul(x, t["weight"], t["weight_scale"], bias, torch.float32, config=cfg)
    assert rel(y, fmt.reference_linear(x, t, bias, torch.float32)) < tol


def test_w4a16_short_k_tiles():
    # BLOCK_K = 32: four K-tiles share each group scale
    fmt, t, x, bias = _quantized_problem(INT4, 5, 32, 256, torch.float32)
    y = T.w4a16_matmul(x, t["weight"], t["weight_scale"], bias, config=TileConfig(16, 16, 32, 4, 2))
    assert rel(y, fmt.reference_linear(x, t, bias, torch.float32)) < 1e-6


@pytest.mark.parametrize("out_dtype,tol", [(torch.bfloat16, 8e-3), (torch.float16, 1e-3)])
def test_w8a8_half_precision_output(out_dtype, tol):
    fmt, t, x, bias = _quantized_problem(INT8, 17, 128, 256)
    q, s = T.quantize_per_token(x, INT8)
    y = T.w8a8_matmul(q, s, t["weight"], t["weight_scale"], bias.to(out_dtype), out_dtype)
    assert y.dtype == out_dtype
    assert rel(y, fmt.reference_linear(x, t, bias, torch.float32)) < tol


def test_empty_batch():
    _, t, _, _ = _quantized_problem(INT8, 1, 128, 128)
    q, s = T.quantize_per_token(torch.zeros(0, 128), INT8)
    assert T.w8a8_matmul(q, s, t["weight"], t["weight_scale"]).shape == (0, 128)


# -- the kernel through QuantLinear --------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["fp8-triton", "int8-triton", "int4-g128-triton", "fp8-b128-triton"])
@pytest.mark.parametrize("lead", [(1,), (2, 3)])
def test_quantlinear_triton_scheme(scheme, lead):
    kernel = get_kernel("triton")
    layer_fp = torch.nn.Linear(256, 128, bias=True)
    layer = QuantLinear.from_linear(layer_fp, scheme)
    ok, why = kernel.availability(layer.format.name, CPU)
    assert ok, why
    assert kernel.shape_problem(layer.format, 128, 256) is None
    x = torch.randn(*lead, 256, dtype=torch.bfloat16)
    y = layer(x)
    assert y.shape == (*lead, 128) and y.dtype == torch.bfloat16
    tensors = {"weight": layer.weight, "weight_scale": layer.weight_scale}
    ref = layer.format.reference_linear(x, tensors, layer.bias, torch.float32)
    assert rel(y, ref) < 8e-3


@pytest.mark.parametrize("scheme", ["fp8-triton", "int8-triton"])
@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("prequantized", [False, True])
def test_quantlinear_adds_into_residual(scheme, gated, prequantized):
    """layer(x, residual=r, gate=g) adds in place exactly what ``gated_residual_(r, layer(x), g)`` adds
    (here the two-pass path of ``w8a8_matmul_add_``; its Gluon epilogue is checked against that on the
    GPU), for run-dtype and pre-quantized x, and returns r; ``adds_into`` says no off CUDA and for a
    residual that is not one [M, N] matrix in memory."""
    from lightx2v_quant import fused
    from lightx2v_quant.quant.activation import QuantizedActivation

    layer = QuantLinear.from_linear(torch.nn.Linear(256, 128, bias=True), scheme)
    x = torch.randn(1, 6, 256, dtype=torch.bfloat16)
    if prequantized:
        q, sc = T.quantize_per_token(x.view(-1, 256), layer.format.name)
        x = QuantizedActivation(q.view(1, 6, 256), sc.view(1, 6, 1), torch.bfloat16)
    r = torch.randn(1, 6, 128, dtype=torch.bfloat16)
    g = torch.randn(1, 1, 128) if gated else None
    want = fused.gated_residual_(r.clone(), layer(x), g)
    got = r.clone()
    assert layer(x, residual=got, gate=g) is got
    assert same_bits(got, want)
    assert not layer.adds_into(r, g)  # CPU tensors
    wide = torch.zeros(2, 6, 256, dtype=torch.bfloat16)[..., :128]  # rows 256 apart: not one matrix
    assert not layer.adds_into(wide)


def test_prepare_adds_no_persistent_state():
    layer = QuantLinear.from_linear(torch.nn.Linear(128, 64), "fp8-triton")
    keys = set(layer.state_dict())
    layer.prepare()
    assert set(layer.state_dict()) == keys
    assert layer.k_w_scale.data_ptr() == layer.weight_scale.data_ptr()  # a view, not a copy


# -- bad input: one clear error --------------------------------------------------------------------------
def test_errors_name_the_problem():
    _, t, x, _ = _quantized_problem(FP8, 4, 128, 256)
    q, s = T.quantize_per_token(x, FP8)
    with pytest.raises(ValueError, match="K mismatch"):
        T.w8a8_matmul(q[:, :128], s, t["weight"], t["weight_scale"])
    with pytest.raises(ValueError, match="int8 or both float8"):
        T.w8a8_matmul(q.view(torch.int8), s, t["weight"], t["weight_scale"])
    with pytest.raises(ValueError, match="K % 128"):
        T.quantize_per_token_group(torch.randn(2, 200))
    with pytest.raises(ValueError, match="handles"):
        T.quantize_per_token(x, INT4)
    t4 = qf.FORMATS[INT4].quantize_weight(torch.randn(64, 256))
    with pytest.raises(ValueError, match="activations must be"):
        T.w4a16_matmul(x.to(torch.int8), t4["weight"], t4["weight_scale"])
