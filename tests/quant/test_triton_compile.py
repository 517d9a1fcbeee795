"""The one-launch quantize+GEMM kernel compiles for sm_90 with the installed Triton, no GPU needed.

The interpreter tests run its loops as Python and never type-check them; this builds the real PTX
(benchmarks/probes/compile_sm90.py, a few seconds) for two tiles: the 64-row wgmma one CLIP takes, and
a 16-row mma.sync one with a ragged K and no bias (the small-M path).
"""

from __future__ import annotations

import importlib.util
import re
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


def _gluon_gemm_compiler(monkeypatch):
    """(compile(cfg, a_dtype, use_pdl) -> the kernel built for sm_90, gluon_gemm, triton_tuning), or a
    skip where this Triton cannot build Gluon for NVIDIA GPUs (Gluon has no CPU interpreter)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    triton = pytest.importorskip("triton")
    if "nvidia" not in triton.backends.backends:
        pytest.skip("this Triton has no NVIDIA backend")
    import torch
    from triton.backends.compiler import GPUTarget

    from lightx2v_quant.quant.kernels import gluon_gemm
    from lightx2v_quant.quant.kernels import triton_tuning as tt

    if not gluon_gemm.AVAILABLE:
        pytest.skip("this Triton has no Gluon")

    def build(cfg, a_dtype, use_pdl=False):
        src = gluon_gemm.ast_source(cfg, a_dtype, torch.bfloat16, True, use_pdl)
        return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": cfg.num_warps})

    return build, gluon_gemm, tt


@pytest.mark.parametrize("a_dtype", ["float8_e4m3fn", "int8"])
def test_gluon_gemm_builds_for_hopper_with_async_wgmma(monkeypatch, a_dtype):
    """The Gluon W8A8 kernel builds for sm_90 with this Triton, fits the shared memory it is offered
    with, and keeps one wgmma group in flight across K steps (``wgmma.wait_group 1`` in the loop), for
    int8 as for fp8: the reason it exists."""
    import torch

    build, gluon_gemm, tt = _gluon_gemm_compiler(monkeypatch)
    cfg = tt._g(128, 256, 128, 8, 4)
    assert cfg in tt.candidates(tt.W8A8, 32760, 90, 232448, 1, 2)
    dtype = getattr(torch, a_dtype)
    kernel = build(cfg, dtype)
    ptx = kernel.asm["ptx"]
    assert kernel.metadata.shared <= 232448
    # per K step each warpgroup issues (BLOCK_K / 32) x (BLOCK_N / instruction width) wgmmas
    per_k_step = (cfg.block_k // 32) * (cfg.block_n // gluon_gemm.instr_n(cfg.block_n, dtype == torch.int8))
    assert ptx.count("wgmma.mma_async") == per_k_step
    assert "wgmma.wait_group.sync.aligned 1;" in ptx


def test_gluon_gemm_waits_for_the_quantizer_only_before_activations(monkeypatch):
    """With programmatic dependent launch the Gluon kernel loads its first weight stages, then waits for
    the quantizer's grid (griddepcontrol.wait), then loads activations: the wait sits between the two."""
    import torch

    build, _, tt = _gluon_gemm_compiler(monkeypatch)
    cfg = tt._g(64, 128, 128, 4, 6)
    ptx = {pdl: build(cfg, torch.int8, pdl).asm["ptx"] for pdl in (False, True)}
    assert "griddepcontrol.wait" not in ptx[False]
    before, after = ptx[True].split("griddepcontrol.wait", 1)
    loads = "cp.async.bulk.tensor"
    assert before.count(loads) == cfg.num_stages - 1  # the weights' first stages
    assert ptx[True].count(loads) == ptx[False].count(loads)  # the same loads, only reordered


@pytest.mark.parametrize("add", ["gate", "plain"])
@pytest.mark.parametrize("a_dtype", ["float8_e4m3fn", "int8"])
def test_gluon_gemm_with_residual_add_builds_for_hopper(monkeypatch, a_dtype, add):
    """The residual-add variant (``w8a8_gluon_add_kernel``) builds for sm_90 in the shared memory of the
    largest tile (the residual's half tiles arrive by TMA in the output staging buffer, one mbarrier),
    with the same K loop as the plain kernel, and loads the residual twice per tile."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget

    build, gluon_gemm, tt = _gluon_gemm_compiler(monkeypatch)
    cfg = tt._g(128, 256, 128, 8, 4)
    dtype = getattr(torch, a_dtype)
    src = gluon_gemm.ast_source(cfg, dtype, torch.bfloat16, True, add=add)
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": cfg.num_warps})
    ptx = kernel.asm["ptx"]
    assert kernel.metadata.shared <= 232448
    assert "wgmma.wait_group.sync.aligned 1;" in ptx
    # TMA loads: A and W (ring prologue and K loop) as in the plain kernel, plus the residual's two halves
    plain = build(cfg, dtype).asm["ptx"]
    loads = re.compile(r"cp\.async\.bulk\.tensor\.2d\.shared::\w+\.global")  # (::cta / ::cluster by version)
    assert len(loads.findall(ptx)) == len(loads.findall(plain)) + 2


@pytest.mark.parametrize("out_dtype", ["bfloat16", "float32"])
def test_gluon_w4a16_builds_for_hopper_with_register_operand(monkeypatch, out_dtype):
    """The Gluon W4A16 kernel builds for sm_90 for every tile the tuner offers at the DIT's and T5's
    sizes, within the shared memory it is offered with; each consumer warpgroup issues its four
    register-operand wgmmas per K step (A from registers: the unpacked W never goes to shared memory) and
    waits once per K step, i.e. ptxas did not serialize the wgmmas (it would add a wait after each)."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.tools.disasm import get_sass

    _, _, tt = _gluon_gemm_compiler(monkeypatch)
    from lightx2v_quant.quant.kernels import gluon_w4a16

    out = getattr(torch, out_dtype)
    tiles = {c for m in (32760, 512) for c in tt.candidates(tt.W4A16, m, 90, 232448, 2, out.itemsize) if c.gluon}
    assert tiles, "no Gluon W4A16 tile offered on sm_90"
    for cfg in sorted(tiles, key=lambda c: (c.block_m, c.num_stages)):
        src = gluon_w4a16.ast_source(cfg, torch.bfloat16, True, out)
        kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": gluon_w4a16.NUM_WARPS})
        assert kernel.metadata.shared <= 232448, cfg.label()
        ptx = kernel.asm["ptx"]
        wgmmas = re.findall(r"wgmma\.mma_async\.sync\.aligned\.m64n\d+k16\.f32\.bf16\.bf16 \{[^}]*\}, \{([^}]*)\}", ptx)
        assert len(wgmmas) == 2 * 4, cfg.label()  # two consumer warpgroups x BLOCK_K / 16
        assert all(len(a.split(",")) == 4 and "%r" in a for a in wgmmas)  # A: four registers per thread
        try:
            sass = get_sass(kernel.asm["cubin"])
        except Exception as exc:  # noqa: BLE001 - needs the bundled disassembler
            pytest.skip(f"no SASS disassembler here: {exc}")
        assert sass.count("HGMMA.64x") == 8 and sass.count("WARPGROUP.DEPBAR") == 2, cfg.label()
