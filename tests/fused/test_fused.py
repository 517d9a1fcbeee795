"""Fused norm / modulation / quantization / residual / RoPE kernels vs the official numerics (PyTorch)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.interp_util import run_cases

pytest.importorskip("triton")

# Outputs in the run dtype match the reference up to rare last-bit ties (fp32 summation order, one FMA).
# Triton's CPU interpreter rounds fp32 -> fp8 wrongly when the rounding carries into the exponent (Triton
# 3.9), so its fp8 bar is loose; on CUDA the fp8 values match too.
INTERP = {"mismatch": 2e-3, "err": 1e-5, "fp8_deq": 0.08, "fp8_mismatch": 0.05}
CUDA = {"mismatch": 1e-2, "err": 1e-3, "fp8_deq": 2e-3, "fp8_mismatch": 2e-3}


def _check(res: dict[str, float], bars: dict[str, float]) -> None:
    assert res
    for key, val in res.items():
        name = key.split(":", 1)[1]
        if name.endswith("_differ"):
            # the fused quantization is the per-token quantizer's, bit for bit
            assert val == 0.0, (key, val)
        elif name.startswith("qfp8_deq"):
            assert val < bars["fp8_deq"], (key, val)
        elif name.startswith("qfp8_mismatch"):
            assert val < bars["fp8_mismatch"], (key, val)
        elif name.endswith("scale_err"):
            assert val < 1e-6, (key, val)
        elif name.endswith("mismatch"):
            assert val < bars["mismatch"], (key, val)
        elif name.endswith("_err"):
            assert val < bars["err"], (key, val)


def test_fused_kernels_in_triton_interpreter():
    _check(run_cases(Path(__file__).with_name("fused_cases.py")), INTERP)


@pytest.mark.gpu
def test_fused_kernels_cuda():
    from tests.fused.fused_cases import norm_cases, norm_geometry_cases, rope_cases

    res = {f"a:{k}": v for k, v in norm_cases("cuda", torch.bfloat16, 2, 333, 5120, 1).items()}
    res.update({f"b:{k}": v for k, v in norm_cases("cuda", torch.bfloat16, 1, 64, 1536, 64).items()})
    geometries = {  # the DIT's widths in fp32 and bf16, every warp count, a ragged width, long rows
        **{f"g{w}": (torch.float32, 2, 100, 5120, 1, {"num_warps": w}) for w in (1, 2, 4, 8, 16)},
        **{f"h{w}": (torch.bfloat16, 1, 100, 5120, 1, {"num_warps": w}) for w in (1, 4, 16)},
        "i": (torch.bfloat16, 1, 64, 3072, 64, {}),
        "j": (torch.float32, 1, 64, 1000, 1, {}),
        "k": (torch.float32, 1, 16, 20480, 1, {}),
        "l": (torch.float32, 1, 16, 5120, 1, {"tiled": False}),
    }
    for tag, (x_dtype, B, L, D, Lt, kw) in geometries.items():
        res.update(
            {f"{tag}:{k}": v for k, v in norm_geometry_cases("cuda", x_dtype, B, L, D, Lt, **kw).items()}
        )
    res.update(
        {
            f"c:{k}": v
            for k, v in rope_cases("cuda", torch.bfloat16, 1, (3, 6, 10), 40, 128, torch.bfloat16).items()
        }
    )
    res.update(
        {
            f"d:{k}": v
            for k, v in rope_cases("cuda", torch.bfloat16, 2, (2, 4, 4), 12, 128, torch.float32).items()
        }
    )
    _check(res, CUDA)


def test_fused_kernels_reject_bad_inputs():
    from lightx2v_quant import fused

    x = torch.randn(1, 4, 64)
    with pytest.raises(ValueError, match="modulation tensors"):
        fused.layer_norm_modulate(
            x, 1e-6, torch.bfloat16, shift=torch.randn(1, 3, 64), scale=torch.randn(1, 3, 64)
        )
    with pytest.raises(ValueError, match="fp32"):
        fused.gated_residual_(x, x, torch.randn(1, 1, 64, dtype=torch.float64))
    q = torch.randn(1, 4, 64, dtype=torch.bfloat16)
    cos = torch.ones(4, 16)
    with pytest.raises(ValueError, match="head dim"):
        fused.rms_norm_rope_(q, q[0, 0], cos, cos, 3, 1e-6)
    with pytest.raises(ValueError, match="head_dim 64 or 128"):
        fused.rms_norm_rope_quant(q, q[0, 0], torch.ones(4, 8), torch.ones(4, 8), 4, 1e-6, 0.1)
