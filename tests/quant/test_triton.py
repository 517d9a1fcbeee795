"""The `triton` kernel: availability, the interpreter suite (CPU, in a subprocess), and GPU checks.

The interpreter suite lives in triton_interp_cases.py and needs TRITON_INTERPRET=1 set before Triton
kernels are defined; running it in a subprocess keeps that variable away from every other test. The GPU
tests (marked `gpu`) run the compiled kernels at Wan's sizes with poisoned outputs, every autotuning
candidate included.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightx2v_quant.hardware import HardwareSpec
from lightx2v_quant.quant import formats as qf
from lightx2v_quant.quant.kernels import get_kernel

FP8, INT8, INT4, B128 = "w8a8-fp8-channel", "w8a8-int8-channel", "w4a16-int4-g128", "w8a8-fp8-block128"
ROOT = Path(__file__).resolve().parents[2]
CASES = Path(__file__).with_name("triton_interp_cases.py")


def test_interpreter_suite():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(CASES)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if "cannot run loops with run-time bounds" in proc.stdout:  # a known Triton/NumPy combination
        pytest.skip("Triton's interpreter here cannot run loops with run-time bounds (3.6 + NumPy >= 2.4)")
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-2000:]


def test_availability_and_requirements(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    kernel = get_kernel("triton")
    cpu = HardwareSpec(name="cpu", device="cpu", compute_capability=None, memory_gb=8.0)
    ok, why = kernel.availability(FP8, cpu)
    assert not ok and "cuda" in why
    a100 = HardwareSpec(name="A100", device="cuda", compute_capability=(8, 0), memory_gb=80.0)
    assert kernel.hardware_problem(FP8, a100) is not None  # fp8 dots need sm_89+
    assert kernel.hardware_problem(INT8, a100) is None
    assert kernel.hardware_problem(INT4, a100) is None
    h100 = HardwareSpec(name="H100", device="cuda", compute_capability=(9, 0), memory_gb=80.0)
    assert all(kernel.hardware_problem(f, h100) is None for f in kernel.formats)
    assert kernel.shape_problem(qf.FORMATS[INT4], 64, 200) is not None  # K % 128
    assert kernel.shape_problem(qf.FORMATS[FP8], 72, 200) is None  # kernels mask every edge
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernel.hardware_problem(FP8, cpu) is None


# -- GPU ------------------------------------------------------------------------------------------------
gpu = pytest.mark.gpu


@pytest.fixture
def poison():
    """torch.empty returns NaN-filled (int: max) memory, so an output element no program wrote shows up."""
    old = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.utils.deterministic.fill_uninitialized_memory,
    )
    torch.use_deterministic_algorithms(True, warn_only=True)  # warn only: the fp64 reference uses cuBLAS
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(old[0], warn_only=old[1])
    torch.utils.deterministic.fill_uninitialized_memory = old[2]


@pytest.fixture
def first_candidate(monkeypatch):
    """Correctness tests take each candidate list's first config (no timing: faster; the tuning test
    and test_gpu_every_tuning_candidate cover the rest)."""
    monkeypatch.setenv("LIGHTX2V_QUANT_TRITON_AUTOTUNE", "0")


def _ops():
    pytest.importorskip("triton")
    from lightx2v_quant.quant.kernels import triton_ops

    return triton_ops


def _need_sm(sm: int) -> None:
    major, minor = torch.cuda.get_device_capability()
    if major * 10 + minor < sm:
        pytest.skip(f"needs sm_{sm}+")


def _rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(y).all(), "non-finite output: an unwritten (poisoned) or overflowed element"
    y, ref = y.double(), ref.double()
    return ((y - ref).norm() / ref.norm()).item()


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8)


def _problem(fmt_name: str, m: int, n: int, k: int, x_dtype=torch.bfloat16):
    fmt = qf.FORMATS[fmt_name]
    tensors = fmt.quantize_weight(torch.randn(n, k, device="cuda") * 0.02)
    x = (torch.randn(m, k, device="cuda") * torch.logspace(-2, 1, m, device="cuda")[:, None]).to(x_dtype)
    bias = torch.randn(n, device="cuda").to(x_dtype)
    return fmt, tensors, x, bias


@gpu
@pytest.mark.parametrize("fmt_name", [FP8, INT8])
@pytest.mark.parametrize("m,k", [(1, 5120), (4096, 5120), (2048, 13824), (257, 1280), (37, 20000)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_quantize_per_token_bit_exact(fmt_name, m, k, dtype, poison):
    _need_sm(89 if fmt_name == FP8 else 80)
    T = _ops()
    x = (torch.randn(m, k, device="cuda") * torch.logspace(-3, 2, m, device="cuda")[:, None]).to(dtype)
    x[0, :5] *= 50
    q, s = T.quantize_per_token(x, fmt_name)
    q_ref, s_ref = qf.FORMATS[fmt_name].quantize_activation(x)
    assert torch.equal(_bits(s), _bits(s_ref))
    assert torch.equal(_bits(q), _bits(q_ref))


@gpu
@pytest.mark.parametrize("m,k", [(1, 5120), (4096, 5120), (333, 13824)])
def test_gpu_quantize_per_token_group_bit_exact(m, k, poison):
    _need_sm(89)
    T = _ops()
    x = (torch.randn(m, k, device="cuda") * 3).bfloat16()
    q, s = T.quantize_per_token_group(x)
    q_ref, s_ref = qf.FORMATS[B128].quantize_activation(x)
    assert torch.equal(_bits(q), _bits(q_ref))
    assert torch.equal(s, s_ref)


# (M, N, K): DIT 14B qkvo / ffn-down at 4096 tokens, time embedding (M=1), time projection, T5, CLIP
GPU_SHAPES = [
    (4096, 5120, 5120),
    (4096, 5120, 13824),
    (1, 5120, 5120),
    (2, 30720, 5120),
    (512, 10240, 4096),
    (257, 5120, 1280),
]


@gpu
@pytest.mark.parametrize("fmt_name", [FP8, INT8])
@pytest.mark.parametrize("m,n,k", GPU_SHAPES)
def test_gpu_w8a8_linear(fmt_name, m, n, k, poison, first_candidate):
    _need_sm(89 if fmt_name == FP8 else 80)
    T = _ops()
    fmt, t, x, bias = _problem(fmt_name, m, n, k)
    ref = fmt.reference_linear(x, t, bias, torch.float32)
    q, s = T.quantize_per_token(x, fmt_name)
    y32 = T.w8a8_matmul(q, s, t["weight"], t["weight_scale"], bias, torch.float32)
    # int8: int32 accumulation is exact. fp8: Hopper accumulates fp8 products with limited precision
    # across the whole K (the fast accumulation vLLM's and sgl's kernels use too).
    err = _rel(y32, ref)
    print(f"{fmt_name} {m}x{n}x{k} fp32-out rel err {err:.2e}")
    assert err < (1e-5 if fmt_name == INT8 else 1e-2)
    y = T.linear_w8a8(x, fmt_name, t["weight"], t["weight_scale"].view(-1), bias)
    assert y.dtype == torch.bfloat16 and y.shape == (m, n)
    assert _rel(y, ref) < (4e-3 if fmt_name == INT8 else 1.2e-2)


@gpu
@pytest.mark.parametrize("m,n,k", GPU_SHAPES)
def test_gpu_fp8_block_linear(m, n, k, poison, first_candidate):
    _need_sm(89)
    T = _ops()
    fmt, t, x, bias = _problem(B128, m, n, k)
    ref = fmt.reference_linear(x, t, bias, torch.float32)
    q, s = T.quantize_per_token_group(x)
    err = _rel(T.fp8_block_matmul(q, s, t["weight"], t["weight_scale"], bias, torch.float32), ref)
    print(f"fp8-block128 {m}x{n}x{k} fp32-out rel err {err:.2e}")
    assert err < 2e-3  # partial products promoted to fp32 every 128 of K
    assert _rel(T.linear_fp8_block(x, t["weight"], t["weight_scale"], bias), ref) < 5e-3


@gpu
@pytest.mark.parametrize("m,n,k", GPU_SHAPES)
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 6e-3), (torch.float16, 2e-3)])
def test_gpu_w4a16_linear(m, n, k, dtype, tol, poison, first_candidate):
    _need_sm(80)
    T = _ops()
    fmt, t, x, bias = _problem(INT4, m, n, k, dtype)
    ref = fmt.reference_linear(x, t, bias, torch.float32)
    # scaled weights are rounded to the activation dtype before the 16-bit dot
    assert _rel(T.w4a16_matmul(x, t["weight"], t["weight_scale"], bias, torch.float32), ref) < tol
    y = T.linear_w4a16(x, t["weight"], t["weight_scale"], bias)
    assert y.dtype == dtype and _rel(y, ref) < tol + 4e-3


@gpu
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fp8", "int8", "fp8-block128", "w4a16"])
def test_gpu_every_tuning_candidate(kind, poison):
    """Each tile config the tuner may pick computes the right thing (uneven N, and K tails for W8A8)."""
    _need_sm(80 if kind in ("int8", "w4a16") else 89)
    T = _ops()
    from triton.errors import TritonError

    from lightx2v_quant.quant.kernels import triton_tuning as tt

    sm, _, smem = T._device_info(torch.device("cuda"))
    fmt_name = {"fp8": FP8, "int8": INT8, "fp8-block128": B128, "w4a16": INT4}[kind]
    tuning_kind = {"fp8-block128": tt.FP8_BLOCK, "w4a16": tt.W4A16}.get(kind, tt.W8A8)
    n, k = 1088, 1024 if kind in ("fp8-block128", "w4a16") else 1040
    checked, failed = 0, []
    for m in (16, 300, 2048):
        fmt, t, x, bias = _problem(fmt_name, m, n, k)
        ref = fmt.reference_linear(x, t, bias, torch.float32)
        a_bytes = 2 if kind == "w4a16" else 1
        for cfg in tt.candidates(tuning_kind, m, sm, smem, a_bytes, 4):
            try:
                if kind == "w4a16":
                    y = T.w4a16_matmul(x, t["weight"], t["weight_scale"], bias, torch.float32, config=cfg)
                elif kind == "fp8-block128":
                    q, s = T.quantize_per_token_group(x)
                    y = T.fp8_block_matmul(
                        q, s, t["weight"], t["weight_scale"], bias, torch.float32, config=cfg
                    )
                else:
                    q, s = T.quantize_per_token(x, fmt_name)
                    y = T.w8a8_matmul(q, s, t["weight"], t["weight_scale"], bias, torch.float32, config=cfg)
            except TritonError as exc:  # does not build here: the tuner skips it the same way
                failed.append(f"{cfg.label()}: {type(exc).__name__}")
                continue
            tol = {"int8": 1e-5, "fp8": 1e-2, "fp8-block128": 2e-3, "w4a16": 6e-3}[kind]
            err = _rel(y, ref)
            assert err < tol, f"{kind} m={m} {cfg.label()}: rel err {err:.2e}"
            checked += 1
    print(f"{kind}: {checked} configs checked; not built here: {failed}")
    assert checked > 0


@gpu
@pytest.mark.parametrize("scheme", ["fp8-triton", "int8-triton", "int4-g128-triton", "fp8-b128-triton"])
@pytest.mark.parametrize("lead", [(1,), (2,), (2, 77)])
def test_gpu_quantlinear_small_m(scheme, lead, poison, first_candidate):
    """Time-embedding sized inputs (M = batch) through QuantLinear, 3-D inputs included."""
    from lightx2v_quant.quant.linear import QuantLinear

    _need_sm(89 if "fp8" in scheme else 80)
    _ops()
    linear = torch.nn.Linear(5120, 1536, bias=True, device="cuda", dtype=torch.bfloat16)
    layer = QuantLinear.from_linear(linear, scheme)
    x = torch.randn(*lead, 5120, device="cuda", dtype=torch.bfloat16)
    y = layer(x)
    tensors = {"weight": layer.weight, "weight_scale": layer.weight_scale}
    ref = layer.format.reference_linear(x, tensors, layer.bias, torch.float32)
    assert y.shape == (*lead, 1536) and y.dtype == torch.bfloat16
    assert _rel(y, ref) < 1.2e-2


@gpu
def test_gpu_tuner_records_its_choice(poison):
    _need_sm(89)
    T = _ops()
    from lightx2v_quant.quant.kernels.triton_tuning import TUNER

    fmt, t, x, bias = _problem(FP8, 3000, 2048, 2048)
    y = T.linear_w8a8(x, FP8, t["weight"], t["weight_scale"].view(-1), bias)
    assert _rel(y, fmt.reference_linear(x, t, bias, torch.float32)) < 1.2e-2
    keys = [key for key in TUNER.records if key[0] == "w8a8" and key[4:6] == (2048, 2048)]
    assert keys and "config" in TUNER.records[keys[0]]
