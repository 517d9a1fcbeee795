"""The DIT's fused path against its official path, run in Triton's CPU interpreter by the tests (a
subprocess with TRITON_INTERPRET=1) or on CUDA. fp16 on the interpreter (it truncates fp32 -> bf16)."""

from __future__ import annotations

import json
import sys

import torch

from lightx2v_quant.models.wan import random_dit
from lightx2v_quant.models.wan.speed import configure_dit
from lightx2v_quant.quant.apply import prepare_model
from tests.models.dit_util import inputs, tiny


CHUNK = 7  # speed.token_chunk for the tiny models: 18 test tokens -> 3 chunks, a ragged last one


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def fused_vs_official(
    device: str, dtype: torch.dtype, quant: str | None, i2v: bool = False
) -> dict[str, float]:
    return _fused_vs_official(device, dtype, quant, i2v)


def _fused_vs_official(device: str, dtype: torch.dtype, quant: str | None, i2v: bool) -> dict[str, float]:
    cfg = tiny(i2v=i2v, num_layers=2)
    model = random_dit(cfg, dtype, device, seed=0, quant=quant)
    prepare_model(model)
    inp = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in inputs(cfg, batch=2).items()}
    res = {}
    with torch.no_grad():
        configure_dit(model, fused=False)
        ref = model(**inp)
        rep = configure_dit(model, fused=True, prequant=False, token_chunk=CHUNK)
        assert rep["fused"] is True and rep["token_chunk"] == CHUNK
        res["fused"] = rel(model(**inp), ref)
        rep = configure_dit(model, fused=True, prequant=False, token_chunk=0)  # all tokens at once
        res["fused_unchunked"] = rel(model(**inp), ref)
        if quant is not None:
            rep = configure_dit(model, fused=True, prequant=True, token_chunk=CHUNK)
            assert rep["prequantized_inputs"]["self_attn"] == "2/2 blocks", rep
            res["fused_prequant"] = rel(model(**inp), ref)
        else:  # the residual stream in the run dtype, official and fused paths
            configure_dit(model, fused=False, residual="run_dtype")
            ref16 = model(**inp)
            rep = configure_dit(model, fused=True, prequant=False, residual="run_dtype", token_chunk=CHUNK)
            assert rep["residual"] == "run_dtype" and model.blocks[0].residual_dtype == dtype
            res["fused_residual16"] = rel(model(**inp), ref16)
            res["residual16_vs_fp32"] = rel(ref16, ref)
    return res


def gelu_fusion(device: str, dtype: torch.dtype, quant: str) -> dict[str, float]:
    """The fused, pre-quantized DIT with the FFN's GELU + quantization in one kernel vs the same path with
    nn.GELU and the down projection quantizing its own input (``ffn.gelu_quant`` off), 0.0 when identical;
    and the blocks configured (``ffn_hidden`` of configure_dit's report)."""
    cfg = tiny(num_layers=2)
    model = random_dit(cfg, dtype, device, seed=0, quant=quant)
    prepare_model(model)
    inp = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in inputs(cfg, batch=2).items()}
    with torch.no_grad():
        rep = configure_dit(model, fused=True, prequant=True, fuse_gelu=True, token_chunk=CHUNK)
        out = model(**inp)
        for block in model.blocks:
            block.ffn.gelu_quant = None
        ref = model(**inp)
    return {"gelu_fusion": rel(out, ref), "ffn_hidden_blocks": float(rep["prequantized_inputs"]["ffn_hidden"][0])}


def offload_fused(scheme: str | None) -> float:
    """Phase offload (CPU fake transport that defers copies, so a weight read before its phase arrives is
    stale) on the fused path vs the fused path without offload; 0.0 when identical."""
    import copy

    from lightx2v_quant.config import OffloadConfig
    from lightx2v_quant.offload.manager import wrap_for_offload
    from tests.offload.fakes import FakeTransport

    cfg = tiny(num_layers=2)
    model = random_dit(cfg, torch.float16, "cpu", seed=0, quant=scheme)
    prepare_model(model)
    configure_dit(model, fused=True)
    inp = inputs(cfg, batch=1)
    with torch.no_grad():
        expected = copy.deepcopy(model)(**inp)
        handle = wrap_for_offload(
            model, OffloadConfig(mode="phase", granularity="phase"), "cpu", transport=FakeTransport(lazy=True)
        )
        with handle:
            out = model(**inp)
        handle.close()
    return rel(out, expected)


def prequant_linear(device: str, scheme: str) -> float:
    """A QuantLinear fed the format's own per-token quantization of x (a QuantizedActivation) vs fed x."""
    from torch import nn

    from lightx2v_quant.quant import formats as qf
    from lightx2v_quant.quant.activation import PER_TOKEN_FORMATS, QuantizedActivation
    from lightx2v_quant.quant.linear import QuantLinear

    g = torch.Generator().manual_seed(3)
    lin = nn.Linear(256, 128)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(128, 256, generator=g) / 16)
    layer = QuantLinear.from_linear(lin, scheme).to(device)
    layer.prepare()
    x = torch.randn(2, 33, 256, generator=g).to(torch.float16).to(device)
    act = layer.kernel.prequantized_input(layer)
    q, s = qf.FORMATS[PER_TOKEN_FORMATS[act]].quantize_activation(x.reshape(-1, 256))
    with torch.no_grad():
        y_pre = layer(QuantizedActivation(q.view(2, 33, 256), s.view(2, 33, 1), x.dtype))
        y = layer(x)
    assert y_pre.shape == y.shape and y_pre.dtype == y.dtype
    return rel(y_pre, y)


if __name__ == "__main__":
    out = {f"none:{k}": v for k, v in fused_vs_official("cpu", torch.float16, None).items()}
    out.update(
        {f"int8:{k}": v for k, v in fused_vs_official("cpu", torch.float16, "int8-torch", i2v=True).items()}
    )
    out["int8-triton:prequant_linear"] = prequant_linear("cpu", "int8-triton")
    out["offload:fused_phase"] = offload_fused("int8-torch")
    # the torch kernel's schemes (the triton GEMMs take ~1 min in the interpreter: on CUDA in the GPU test)
    for scheme in ("fp8-torch", "int8-torch", "int4-g128-torch"):
        out.update({f"{scheme}:{k}": v for k, v in gelu_fusion("cpu", torch.float16, scheme).items()})
    print(json.dumps(out))
    sys.stdout.flush()
