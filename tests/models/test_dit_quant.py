"""Quantized tiny DITs (online quantization of seeded random weights) against the fp32 model, and the
seeded random init itself."""

from __future__ import annotations

import pytest
import torch

from lightx2v_quant.models.wan import QUANTIZABLE, build_dit, random_dit
from lightx2v_quant.quant.apply import kernels_used
from lightx2v_quant.quant.linear import QuantLinear
from tests.models.dit_util import inputs, sqnr_db, tiny

# Measured on the tiny models: int8 ~47 dB, fp8 ~37 dB, int4-g128 ~27 dB, fp8-b128 ~37 dB.
MIN_SQNR_DB = {"int8-torch": 38.0, "fp8-torch": 30.0, "int4-g128-torch": 21.0, "fp8-b128-torch": 30.0}


@pytest.fixture(scope="module")
def reference():
    out = {}
    with torch.no_grad():
        for i2v in (False, True):
            cfg = tiny(i2v)
            inp = inputs(cfg, batch=1, latent=(3, 8, 8), ctx_len=40)
            out[i2v] = (cfg, inp, random_dit(cfg, torch.float32, "cpu", seed=3)(**inp))
    return out


@pytest.mark.parametrize("scheme", list(MIN_SQNR_DB))
@pytest.mark.parametrize("i2v", [False, True], ids=["t2v", "i2v"])
def test_quantized_dit_close_to_fp32(reference, scheme, i2v):
    cfg, inp, ref = reference[i2v]
    model = random_dit(cfg, torch.float32, "cpu", seed=3, quant=scheme)
    layers = [n for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    assert len(layers) == cfg.num_layers * (12 if i2v else 10)
    assert kernels_used(model) == {f"{scheme} via torch": len(layers)}
    with torch.no_grad():
        out = model(**inp)
    assert torch.isfinite(out).all()
    assert sqnr_db(ref, out) > MIN_SQNR_DB[scheme]


def test_quantized_bf16_run(reference):
    cfg, inp, ref = reference[False]
    with torch.no_grad():
        out = random_dit(cfg, torch.bfloat16, "cpu", seed=3, quant="fp8-torch")(**inp)
    assert out.dtype == torch.float32 and sqnr_db(ref, out) > MIN_SQNR_DB["fp8-torch"]


def test_empty_quant_shells_on_meta():
    model = build_dit(tiny(True), torch.bfloat16, quant="int4-g128-torch")
    q = model.blocks[0].cross_attn.k_img
    assert isinstance(q, QuantLinear) and q.weight.is_meta and q.weight.shape == (256, 128)
    assert all(p.is_meta for p in model.state_dict().values())
    assert len(QUANTIZABLE) == 12


def test_random_dit_is_seeded():
    cfg = tiny()
    a, b, c = (random_dit(cfg, torch.bfloat16, "cpu", seed=s).state_dict() for s in (7, 7, 8))
    for key in ("blocks.1.ffn.2.weight", "head.modulation", "patch_embedding.weight", "blocks.0.norm3.bias"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
        assert not torch.equal(a[key], c[key])


def test_random_dit_finite_through_40_bf16_blocks():
    cfg = tiny(num_layers=40)
    model = random_dit(cfg, torch.bfloat16, "cpu", seed=7)
    with torch.no_grad():
        out = model(**inputs(cfg, batch=1, latent=(1, 4, 4), ctx_len=16))
    assert torch.isfinite(out).all() and 0.1 < out.std() < 10
    assert model.load_report.source == "seeded random weights (seed 7)"


def test_random_weights_do_not_depend_on_dtype_or_quant():
    cfg = tiny()
    w32 = random_dit(cfg, torch.float32, "cpu", seed=1).blocks[0].ffn[0].weight
    w16 = random_dit(cfg, torch.bfloat16, "cpu", seed=1).blocks[0].ffn[0].weight
    torch.testing.assert_close(w16, w32.to(torch.bfloat16), rtol=0, atol=0)
    q = random_dit(cfg, torch.float32, "cpu", seed=1, quant="int8-torch").blocks[0].ffn[0]
    torch.testing.assert_close(q.weight, q.format.quantize_weight(w32)["weight"], rtol=0, atol=0)


def test_build_on_a_real_device_and_quant_none():
    cfg = tiny()
    model = build_dit(cfg, torch.float32, "cpu", quant="int8-torch")  # default init, quantized online
    assert isinstance(model.blocks[1].self_attn.o, QuantLinear) and not model.blocks[1].self_attn.o.weight.is_meta
    with torch.no_grad():
        assert torch.isfinite(model(**inputs(cfg, batch=1))).all()
    plain = build_dit(cfg, torch.float32, quant="none")
    assert not any(isinstance(m, QuantLinear) for m in plain.modules())
