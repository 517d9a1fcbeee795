"""The `triton` kernel on CPU: availability, launch geometry, the tuner's bookkeeping, and the
interpreter suite (in a subprocess).

The interpreter suite lives in triton_interp_cases.py and needs TRITON_INTERPRET=1 set before Triton
kernels are defined; running it in a subprocess keeps that variable away from every other test. The
compiled kernels are tested on a GPU by test_triton_gpu.py.
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




# -- launch geometry and tuning bookkeeping (pure Python) ------------------------------------------------
@pytest.mark.parametrize("k", [1, 100, 1000, 1280, 1536, 4096, 5120, 7936, 8960, 10240, 13824, 16384])
@pytest.mark.parametrize("warps", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("elem", [2, 4])
def test_quantizer_tiles_cover_the_row(k, warps, elem):
    pytest.importorskip("triton")
    from lightx2v_quant.quant.kernels.triton_quant import MAX_TILES, tile_rows

    g, rows, masked = tile_rows(k, warps, elem)
    assert g == (16 // elem) * 32 * warps  # one 16-byte vector per thread per tile row
    used = [r for r in rows if r]
    assert len(rows) == MAX_TILES and rows[: len(used)] == tuple(used)  # zeros only at the end
    assert all(r & (r - 1) == 0 for r in used)  # powers of two (Triton tensor shapes)
    assert g * sum(used) >= k and g * (sum(used) - used[-1]) < k  # covers the row; no idle tile
    assert masked == (g * sum(used) != k)
    if len(used) < MAX_TILES:  # exact binary digits: padding below one tile row
        assert g * sum(used) - k < g


def test_quant_candidates():
    pytest.importorskip("triton")
    from lightx2v_quant.quant.kernels.triton_tuning import default_quant_config, quant_candidates

    assert default_quant_config(5120, 2).num_warps == 4  # five 16-byte vectors per thread
    assert default_quant_config(1280, 2).num_warps == 1
    for k in (1280, 5120, 13824, 20000):
        cands = quant_candidates(k, 2)
        assert cands[0] == default_quant_config(k, 2) and len(set(cands)) == len(cands)


def test_linear_routes():
    """The size rule: one-launch tiles (then SPLIT, for the tuner) for M <= 64 only; SPLIT alone for CLIP
    (measured slower fused on an H100), T5 and the DIT; the route variable forces either."""
    pytest.importorskip("triton")
    from lightx2v_quant.quant.kernels import triton_fused as tf
    from lightx2v_quant.quant.kernels import triton_tuning as tt

    h100 = (90, 232448)
    split_only = [(32760, 5120, 5120), (32760, 13824, 5120), (512, 4096, 4096), (257, 5120, 1280), (65, 64, 64)]
    for m, n, k in split_only:
        assert not tf.fused_route_eligible(m, n, k)
        assert tf.linear_candidates(m, n, k, *h100) == [tt.SPLIT]
    for m, n, k in [(1, 30720, 5120), (16, 5120, 5120), (64, 1536, 5120)]:
        assert tf.fused_route_eligible(m, n, k)
        routes = tf.linear_candidates(m, n, k, *h100)
        assert routes[-1] == tt.SPLIT and len(routes) > 1 and all(r.fused for r in routes[:-1])
        assert routes[0].label().startswith("fused") and tt.SPLIT.label().startswith("split")
        assert all(r.block_m <= 64 for r in routes[:-1])
    assert tf.linear_candidates(16, 5120, 5120, *h100, mode="split") == [tt.SPLIT]
    forced = tf.linear_candidates(257, 5120, 1280, *h100, mode="fused")  # benchmarks force it for CLIP
    assert forced and all(r.fused and r.block_m in (64, 128) for r in forced)  # wgmma: 64 rows / warpgroup
    assert all(r.fused for r in tf.linear_candidates(512, 4096, 4096, *h100, mode="fused"))
    with pytest.raises(ValueError, match="at most 1024 rows"):
        tf.linear_candidates(32760, 5120, 5120, *h100, mode="fused")
    ampere = tf.linear_candidates(257, 5120, 1280, 80, 166912, mode="fused")
    assert all(r.num_warps == 4 and r.block_m * r.block_n <= 64 * 128 for r in ampere)
    # small M: pointer kernels only (their launches are replayed); medium M: pointer kernels, plus the
    # Gluon W8A8 and W4A16 kernels on sm_90 (T5's GEMMs), never the tl TMA kernels
    for kind in tt.KINDS:
        for m in (1, 257, 512):
            cands = tt.candidates(kind, m, 90, 232448, 1, 2)
            assert not any(c.tma and not c.gluon for c in cands)
            assert not any(c.gluon for c in cands) or (kind in (tt.W8A8, tt.W4A16) and m > 64)


def test_gluon_tiles_only_where_they_run(monkeypatch):
    """Gluon tiles (wgmma) are offered for medium and large per-channel W8A8 and W4A16 GEMMs on sm_90 only,
    with a Triton that has Gluon, and only where their ring plus the half-tile staging buffer fits in shared
    memory."""
    pytest.importorskip("triton")
    from lightx2v_quant.quant.kernels import triton_tuning as tt

    hopper = tt.candidates(tt.W8A8, 32760, 90, 232448, 1, 2)
    gluon = [c for c in hopper if c.gluon]
    if tt.GLUON_GEMM:
        assert gluon and all(c.tma and c.label().startswith("gluon") for c in gluon)
    assert all(c.smem_bytes(1, 1, 2) <= 232448 for c in gluon)
    # 128x256x128, four stages: 4 x 48 KiB operands + a 128x128 bf16 half tile = 224 KiB
    assert tt._g(128, 256, 128, 8, 4).smem_bytes(1, 1, 2) == 4 * 49152 + 32768
    # fp32 output doubles the staging buffer: the four-deep 128x256 ring no longer fits
    assert tt._g(128, 256, 128, 8, 4) not in tt.candidates(tt.W8A8, 32760, 90, 232448, 1, 4)
    for sm in (80, 89, 100, 120):
        assert not any(c.gluon for c in tt.candidates(tt.W8A8, 32760, sm, 232448, 1, 2))
    assert not any(c.gluon for c in tt.candidates(tt.FP8_BLOCK, 32760, 90, 232448, 1, 2))
    # W4A16 (gluon_w4a16): 16-bit activations; tokens x 128 weight rows, BLOCK_K 64
    w4 = [c for c in tt.candidates(tt.W4A16, 32760, 90, 232448, 2, 2) if c.gluon]
    assert w4 if tt.GLUON_GEMM else not w4
    assert all(c.block_n == 128 and c.block_k == 64 and c.block_m <= 256 for c in w4)
    assert all(c.smem_bytes(2, 0.5, 2) <= 232448 for c in w4)
    for sm in (80, 89, 100):
        assert not any(c.gluon for c in tt.candidates(tt.W4A16, 32760, sm, 232448, 2, 2))
    assert not any(c.gluon for c in tt.candidates(tt.W8A8, 16, 90, 232448, 1, 2))  # small M: pointer only
    for m in (257, 512):  # medium M (CLIP, T5): Gluon tiles of at most the rows M fills
        medium = [c for c in tt.candidates(tt.W8A8, m, 90, 232448, 1, 2) if c.gluon]
        assert medium if tt.GLUON_GEMM else not medium
        assert all(c.block_m <= 128 for c in medium)
    monkeypatch.setattr(tt, "GLUON_GEMM", False)  # a Triton without Gluon
    assert not any(c.gluon for c in tt.candidates(tt.W8A8, 32760, 90, 232448, 1, 2))


def test_tuner_file_round_trip(tmp_path, monkeypatch):
    """Choices are saved with the device and Triton version in the key, and read back as the right
    config type; timing is faked (no GPU)."""
    pytest.importorskip("triton")
    from lightx2v_quant.quant.kernels import triton_tuning as tt

    path = tmp_path / "tune.json"
    monkeypatch.setenv("LIGHTX2V_QUANT_TRITON_TUNE_FILE", str(path))
    monkeypatch.setattr(tt, "INTERPRETING", False)
    monkeypatch.setattr(tt, "_precompile", lambda cands, launch: None)
    fake_ms = {tt.QuantConfig(4): 0.3, tt.QuantConfig(2): 0.2, tt.QuantConfig(8): 0.25}
    monkeypatch.setattr(tt, "_time", lambda launch, cfg: fake_ms[cfg])
    tuner = tt.Tuner()
    key = (tt.QUANT, "w8a8-fp8-channel", "torch.bfloat16", "large", 5120)
    best = tuner.choose(key, list(fake_ms), lambda cfg, warmup=False: None, cls=tt.QuantConfig)
    assert best == tt.QuantConfig(2)
    assert tuner.records[key]["timings_ms"]["quant w2"] == 0.2
    fresh = tt.Tuner()  # a new process: reads the file, times nothing
    monkeypatch.setattr(tt, "_time", lambda launch, cfg: pytest.fail("timed again"))
    again = fresh.choose(key, list(fake_ms), lambda cfg, warmup=False: None, cls=tt.QuantConfig)
    assert again == tt.QuantConfig(2) and fresh.records[key]["from_file"]
    from lightx2v_quant.quant.kernels.triton_fused import linear_candidates

    route_key = (tt.LINEAR, "w8a8-fp8-channel", "torch.bfloat16", "torch.bfloat16", 16, 5120, 1280)
    route_key += ("fused+split",)
    monkeypatch.setattr(tt, "_time", lambda launch, cfg: 0.1 if cfg.fused else 0.2)
    cands = linear_candidates(16, 5120, 1280, 90, 232448)
    route = fresh.choose(route_key, cands, lambda cfg, warmup=False: None)
    assert tt.Tuner().choose(route_key, [tt.SPLIT], lambda cfg, warmup=False: None) == route and route.fused


def test_replay_passes_the_jit_arguments_in_signature_order():
    """A replay hands Triton's compiled-kernel runner the same argument list the JIT would (all
    parameters in signature order, constexprs included), with a three-dimensional grid."""
    pytest.importorskip("triton")
    from lightx2v_quant.quant.kernels import triton_launch
    from lightx2v_quant.quant.kernels.triton_quant import _per_token_kernel, per_token_launch

    calls = []

    class FakeCompiled:
        def __getitem__(self, grid):
            def runner(*args, stream=None):
                calls.append((grid, args, stream))

            return runner

    x, q, s = torch.zeros(3, 1280, dtype=torch.bfloat16), torch.zeros(3, 1280), torch.zeros(3, 1)
    kernel, args, meta = per_token_launch(x, q, s, FP8, 1)
    assert kernel is _per_token_kernel
    replay = triton_launch.capture(FakeCompiled(), kernel, (3,), args, meta, n_dynamic=3)
    x2, q2, s2 = x.clone(), q.clone(), s.clone()
    replay(7, x2, q2, s2)
    (grid, passed, stream), = calls
    assert grid == (3, 1, 1) and stream == 7
    expected = [x2, q2, s2, *args[3:]] + [meta[name] for name in kernel.arg_names[len(args) :]]
    assert len(passed) == len(kernel.arg_names) == len(expected)
    assert all(a is b or a == b for a, b in zip(passed, expected))
    # fixed arguments that are tensors (or descriptors) cannot be replayed
    assert triton_launch.capture(FakeCompiled(), kernel, (3,), args, meta, n_dynamic=2) is None
    assert triton_launch.capture(None, kernel, (3,), args, meta, n_dynamic=3) is None
