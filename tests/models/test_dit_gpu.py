"""The Wan DIT on CUDA (skipped without a GPU): bf16 against CPU fp32, quantized against unquantized, and a
released-size model with random weights."""

from __future__ import annotations

import pytest
import torch

from lightx2v_quant.models.wan import WanDiTConfig, build_dit, random_dit
from tests.models.dit_util import inputs, sqnr_db, tiny

pytestmark = pytest.mark.gpu

MIN_SQNR_DB = {"int8-torch": 30.0, "fp8-torch": 27.0, "int4-g128-torch": 20.0, "fp8-b128-torch": 27.0}


def _cuda(inp: dict) -> dict:
    return {k: v.cuda() for k, v in inp.items()}


@pytest.mark.parametrize("i2v", [False, True], ids=["t2v", "i2v"])
@pytest.mark.parametrize("sensitive", [False, True], ids=["bf16", "sensitive-fp32"])
def test_cuda_bf16_close_to_cpu_fp32(i2v, sensitive):
    cfg = tiny(i2v)
    cpu = random_dit(cfg, torch.float32, "cpu", seed=4)
    gpu = build_dit(cfg, torch.bfloat16, "cuda", sensitive_fp32=sensitive)
    gpu.load_state_dict(cpu.state_dict())
    inp = inputs(cfg)
    with torch.no_grad():
        want = cpu(**inp)
        got = gpu(**_cuda(inp)).cpu()
    assert got.dtype == torch.float32
    assert sqnr_db(want, got) > 35.0  # ~48 dB measured for the same comparison on CPU


def test_cuda_fp32_matches_cpu_fp32():
    cfg = tiny(True)
    cpu = random_dit(cfg, torch.float32, "cpu", seed=4)
    gpu = build_dit(cfg, torch.float32, "cuda")
    gpu.load_state_dict(cpu.state_dict())
    inp = inputs(cfg)
    with torch.no_grad():
        # cuDNN may run the patch-embedding conv in TF32 (10-bit mantissa): ~60 dB, not bit-equal
        assert sqnr_db(cpu(**inp), gpu(**_cuda(inp)).cpu()) > 45.0


@pytest.mark.parametrize("scheme", list(MIN_SQNR_DB))
def test_quantized_on_cuda(scheme):
    if scheme.startswith("fp8") and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs sm_89+")
    cfg = tiny(True)
    inp = _cuda(inputs(cfg, batch=1, latent=(3, 8, 8), ctx_len=40))
    with torch.no_grad():
        # the same seed on the same device gives the same (fp32) weights
        ref = random_dit(cfg, torch.float32, "cuda", seed=3)(**inp)
        out = random_dit(cfg, torch.bfloat16, "cuda", seed=3, quant=scheme)(**inp)
    assert torch.isfinite(out).all()
    assert sqnr_db(ref, out) > MIN_SQNR_DB[scheme]


def test_released_size_random_weights_on_cuda():
    cfg = WanDiTConfig.preset("wan2.1-t2v-1.3b")
    model = random_dit(cfg, torch.bfloat16, "cuda", seed=0)
    inp = _cuda(inputs(cfg, batch=1, latent=(2, 16, 16), ctx_len=30))
    inp["context"] = inp["context"].to(torch.bfloat16)
    with torch.no_grad():
        out = model(**inp)
    assert out.shape == (1, 16, 2, 16, 16) and torch.isfinite(out).all()
