"""Low-precision (int8 Q.K, fp8 / bf16 P.V) Triton attention vs fp64 attention and vs a float64
emulation of the same quantization; the quantization kernels vs their torch reference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.interp_util import run_cases

pytest.importorskip("triton")

# Bars. int8 Q.K alone: the emulation (same int8 values and scales, exact P) agrees to the rounding of P
# to the P.V dtype (fp16 ~1e-4 relative, bf16 ~1e-3). fp8 P.V: 448*P is rounded to fp8 against a running
# row max (the emulation keeps P exact), a few 1e-2 relative. Triton's CPU interpreter rounds fp32 -> fp8
# wrongly when rounding carries into the exponent (124.5 -> 64 instead of 128; seen with Triton 3.9), so
# its fp8 bars are looser than the GPU's.
INTERP = {"snr_int8qk": 45.0, "emu_int8qk": 1e-3, "snr_fp8pv": 30.0, "emu_fp8pv": 0.03, "v_rel": 0.08}
CUDA = {"snr_int8qk": 40.0, "emu_int8qk": 6e-3, "snr_fp8pv": 33.0, "emu_fp8pv": 0.03, "v_rel": 2e-3}


def _check_attention(res: dict[str, float], bars: dict[str, float]) -> None:
    keys = [k for k in res if k.startswith("snr:")]
    assert keys
    for key in keys:
        case = key[4:]
        mode = case.rsplit("-", 1)[1]
        assert res[key] > bars[f"snr_{mode}"], (key, res[key])
        assert res[f"emu:{case}"] < bars[f"emu_{mode}"], (case, res[f"emu:{case}"])


def _check_quant(res: dict[str, float], bars: dict[str, float]) -> None:
    # int8: only float ties may round differently (fp32 kernel vs float64 reference)
    assert res["q8_mismatch"] < 1e-3 and res["q8_maxdiff"] <= 1, res
    assert res["k8_mismatch"] < 1e-3 and res["k8_maxdiff"] <= 1, res
    assert res["qs_rel"] < 1e-6 and res["ks_rel"] < 1e-6, res
    assert res["v_rel"] < bars["v_rel"], res
    assert res["pad_nonzero"] == 0.0, res  # padding rows / columns are zeros (never NaN patterns)


def test_lowp_attention_in_triton_interpreter():
    res = run_cases(Path(__file__).with_name("lowp_cases.py"))
    _check_attention({k: v for k, v in res.items() if not k.startswith("quant:")}, INTERP)
    _check_quant({k[6:]: v for k, v in res.items() if k.startswith("quant:")}, INTERP)


@pytest.mark.gpu
def test_lowp_attention_cuda():
    from tests.attention.lowp_cases import attention_cases, quant_cases

    shapes = [(1, 4096, 4096, 4, 128), (1, 1000, 512, 8, 128), (2, 77, 300, 2, 64), (1, 2050, 2050, 2, 128)]
    shapes += [(1, 1000, 3000, 2, 128, "ramp"), (1, 300, 1000, 2, 64, "ramp")]
    _check_attention(attention_cases("cuda", torch.bfloat16, shapes), CUDA)
    _check_quant(quant_cases("cuda", torch.bfloat16, (2, 1500, 3000, 3, 128)), CUDA)


@pytest.mark.gpu
def test_lowp_attention_cuda_matches_sdpa_on_dit_like_shape():
    """One DIT-sized head group (a ragged 32760-token sequence) against bf16 SDPA."""
    from lightx2v_quant.attention.lowp_triton import lowp_attention
    from tests.attention.lowp_cases import rel_err

    gen = torch.Generator("cuda").manual_seed(0)
    q, k, v = (
        torch.randn(1, 32760, 2, 128, device="cuda", generator=gen, dtype=torch.bfloat16) for _ in range(3)
    )
    ref = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2).float() for t in (q, k, v)))
    ref = ref.transpose(1, 2)
    assert rel_err(lowp_attention(q, k, v, pv_fp8=False).float(), ref) < 0.03
    assert rel_err(lowp_attention(q, k, v, pv_fp8=True).float(), ref) < 0.12


def test_lowp_attention_rejects_bad_inputs():
    from lightx2v_quant.attention.lowp_triton import lowp_attention

    q = torch.randn(1, 8, 2, 96, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="head_dim"):
        lowp_attention(q, q, q)
    q = torch.randn(1, 8, 2, 64)
    with pytest.raises(ValueError, match="bf16 or fp16"):
        lowp_attention(q, q, q)
    with pytest.raises(ValueError, match=r"q \[B, Lq, H, D\]"):
        lowp_attention(q, q[:, :, :1], q)
