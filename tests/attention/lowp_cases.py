"""Accuracy cases for the low-precision attention kernels; run by the tests in Triton's interpreter (CPU,
a subprocess with TRITON_INTERPRET=1) and directly on CUDA. Prints / returns a JSON dict of metrics."""

from __future__ import annotations

import json
import math
import sys

import torch

LOG2E = 1.4426950408889634


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def snr_db(out: torch.Tensor, ref: torch.Tensor) -> float:
    return -20 * math.log10(max(rel_err(out, ref), 1e-30))


def _round_away(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, torch.floor(x + 0.5), torch.ceil(x - 0.5))


def reference_quantize(q, k, v):
    """The quantization the kernels implement, in float64 torch: dict of dequantized / integer tensors."""
    B, Lq, H, D = q.shape
    Lk = k.shape[1]
    qf = q.double() * (D**-0.5 * LOG2E)
    qs = qf.abs().amax(-1, keepdim=True).clamp(min=1e-8) / 127  # [B, Lq, H, 1]
    q8 = _round_away(qf / qs)
    from lightx2v_quant.attention.lowp_quant import KMEAN_STRIDE

    kc = k.double() - k[:, ::KMEAN_STRIDE].double().mean(1, keepdim=True)  # (any m: softmax-invariant)
    nb = -(-Lk // 128)
    pad = torch.zeros(B, nb * 128, H, D, dtype=torch.float64, device=k.device)
    pad[:, :Lk] = kc
    ks = pad.view(B, nb, 128, H, D).abs().amax(dim=(2, 4)).clamp(min=1e-8) / 127  # [B, nb, H]
    ks_tok = ks.repeat_interleave(128, dim=1)[:, :Lk, :, None]  # [B, Lk, H, 1]
    k8 = _round_away(kc / ks_tok)
    vm = v.double().mean(1, keepdim=True)
    vs = (v.double() - vm).abs().amax(1, keepdim=True).clamp(min=1e-8) / 448  # [B, 1, H, D]
    v8 = ((v.double() - vm) / vs).clamp(-448, 448).to(torch.float8_e4m3fn).double()
    return {"q8": q8, "qs": qs, "k8": k8, "ks": ks, "ks_tok": ks_tok, "vm": vm, "vs": vs, "v8": v8}


def emulate(q, k, v, pv_fp8: bool) -> torch.Tensor:
    """Float64 attention on the reference-quantized inputs. P is exact (the kernel rounds 448*P to fp8
    relative to a running row max, which no closed form reproduces; see the error bars in the tests)."""
    r = reference_quantize(q, k, v)
    logits = torch.einsum("blhd,bmhd->bhlm", r["q8"] * r["qs"], r["k8"] * r["ks_tok"])  # log2 units
    p = torch.softmax(logits * math.log(2), dim=-1)
    vv = r["v8"] * r["vs"] + r["vm"] if pv_fp8 else v.double()
    return torch.einsum("bhlm,bmhd->blhd", p, vv)


def exact(q, k, v) -> torch.Tensor:
    return torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2).double(), k.transpose(1, 2).double(), v.transpose(1, 2).double()
    ).transpose(1, 2)


def make_inputs(b, lq, lk, h, d, gen, ramp: bool = False):
    """Random q, k, v with channel offsets; ``ramp`` grows the keys' norms along the sequence (0.5x to 2x),
    so that a query row's max keeps growing from block to block (the kernels' stale-max slack and O's
    rescale, skipped or not, are all exercised)."""
    q = torch.randn(b, lq, h, d, generator=gen)
    k = torch.randn(b, lk, h, d, generator=gen) + 2.0 * torch.randn(d, generator=gen)  # channel offsets
    v = torch.randn(b, lk, h, d, generator=gen) + torch.randn(d, generator=gen)
    if ramp:
        k = k * torch.linspace(0.5, 2.0, lk)[None, :, None, None]
    return q, k, v


def attention_cases(device: str, dtype: torch.dtype, shapes) -> dict[str, float]:
    """Per shape (b, lq, lk, h, d[, "ramp"]) and P.V mode: SNR vs fp64 attention, and relative error vs
    the float64 emulation."""
    from lightx2v_quant.attention.lowp_triton import lowp_attention

    results = {}
    gen = torch.Generator().manual_seed(0)
    for b, lq, lk, h, d, *kind in shapes:
        ramp = kind == ["ramp"]
        # the reference sees the same rounding
        q, k, v = (t.to(dtype) for t in make_inputs(b, lq, lk, h, d, gen, ramp=ramp))
        ref = exact(q, k, v)
        args = [t.to(device) for t in (q, k, v)]
        for pv_fp8 in (True, False):
            out = lowp_attention(*args, pv_fp8=pv_fp8)
            assert out.shape == q.shape and out.dtype == dtype, (out.shape, out.dtype)
            out = out.cpu()
            assert torch.isfinite(out).all()
            key = f"{b}x{lq}x{lk}x{h}x{d}{'-ramp' if ramp else ''}-{'fp8pv' if pv_fp8 else 'int8qk'}"
            results[f"snr:{key}"] = snr_db(out, ref)
            results[f"emu:{key}"] = rel_err(out, emulate(q, k, v, pv_fp8))
            results[f"emu_vs_exact:{key}"] = rel_err(emulate(q, k, v, pv_fp8), ref)
        # V^T with its keys in the Gluon kernel's order (lowp_quant.key_order): whichever kernel the
        # dispatch picks (the Gluon one on Hopper for >= 4096 keys, else the Triton one) reads it
        from lightx2v_quant.attention import lowp_quant, lowp_triton

        qq = lowp_quant.quantize_qkv(*args, sm_scale=d**-0.5 * LOG2E, key_order=True)
        out = lowp_triton._launch(qq, None, lq, lk, h, dtype).cpu()
        key = f"{b}x{lq}x{lk}x{h}x{d}{'-ramp' if ramp else ''}-keyorder-fp8pv"
        results[f"snr:{key}"] = snr_db(out, ref)
        results[f"emu:{key}"] = rel_err(out, emulate(q, k, v, True))
    return results


def quant_cases(device: str, dtype: torch.dtype, shape) -> dict[str, float]:
    """The quantization kernels vs reference_quantize: mismatch fractions and scale errors."""
    from lightx2v_quant.attention.lowp_quant import quantize_qkv

    b, lq, lk, h, d = shape
    gen = torch.Generator().manual_seed(1)
    q, k, v = (t.to(dtype) for t in make_inputs(b, lq, lk, h, d, gen))
    r = reference_quantize(q, k, v)
    qq = quantize_qkv(q.to(device), k.to(device), v.to(device), sm_scale=d**-0.5 * LOG2E, pv_fp8=True)
    lqp, lkp = qq.q.shape[1], qq.k.shape[1]
    q8 = qq.q.cpu().view(b, h, lqp, d).transpose(1, 2)
    k8 = qq.k.cpu().view(b, h, lkp, d).transpose(1, 2)
    v8 = qq.v.cpu().view(b, h, d, lkp).permute(0, 3, 1, 2)  # -> [B, LKP, H, D]
    vdq = v8[:, :lk].double() * qq.v_scale.cpu().view(b, 1, h, d) + qq.v_mean.cpu().view(b, 1, h, d)
    vref = r["v8"] * r["vs"] + r["vm"]
    return {
        "q8_mismatch": float((q8[:, :lq].double() != r["q8"]).double().mean()),
        "q8_maxdiff": float((q8[:, :lq].double() - r["q8"]).abs().max()),
        "qs_rel": rel_err(qq.q_scale.cpu().view(b, h, lqp)[:, :, :lq], r["qs"][..., 0].transpose(1, 2)),
        "k8_mismatch": float((k8[:, :lk].double() != r["k8"]).double().mean()),
        "k8_maxdiff": float((k8[:, :lk].double() - r["k8"]).abs().max()),
        "ks_rel": rel_err(qq.k_scale.cpu().view(b, h, -1), r["ks"].transpose(1, 2)),
        "v_rel": rel_err(vdq, vref),
        "v_mismatch": float((v8[:, :lk].double() != r["v8"]).double().mean()),
        "pad_nonzero": float(
            q8[:, lq:].abs().sum() + k8[:, lk:].abs().sum() + v8[:, lk:].float().abs().sum()
        ),
    }


# interpreter: fp16 (its dot has no bf16); ragged lengths, a key length under one block, an exact multiple
INTERP_SHAPES = [
    (1, 200, 200, 2, 64), (2, 130, 70, 1, 128), (1, 64, 40, 1, 128), (1, 96, 128, 1, 64), (1, 64, 520, 1, 64, "ramp")
]

if __name__ == "__main__":
    res = attention_cases("cpu", torch.float16, INTERP_SHAPES)
    res.update(
        {f"quant:{k}": val for k, val in quant_cases("cpu", torch.float16, (2, 150, 300, 2, 64)).items()}
    )
    print(json.dumps(res))
    sys.stdout.flush()
