"""Cases for the quantization prologue (lowp_quant): the statistics pass (split, pipelined, ragged
lengths) against float64 torch, and the K / V quantization bytes against an fp32 torch emulation of the
same arithmetic on the kernels' own statistics. Run in Triton's interpreter (CPU) and on CUDA."""

from __future__ import annotations

import json
import sys

import torch

# (B, L, H, D): several splits with a ragged last one (1000 = 7 x 128 + 104), a single split shorter
# than one pipelined tile (77), an exact multiple of 128 with one head
SHAPES = [(2, 1000, 3, 64), (1, 77, 2, 128), (1, 256, 1, 64)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-30))


def prologue_cases(device: str, dtype: torch.dtype, shapes=SHAPES) -> dict[str, float]:
    from lightx2v_quant.attention import lowp_quant

    res: dict[str, float] = {}
    gen = torch.Generator().manual_seed(2)
    for B, L, H, D in shapes:
        key = f"{B}x{L}x{H}x{D}"
        offset = 3.0 * torch.randn(D, generator=gen)  # channel offsets, as K and V have
        k = (torch.randn(B, L, H, D, generator=gen) + offset).to(dtype)
        v = (torch.randn(B, L, H, D, generator=gen) - offset).to(dtype)
        kd, vd = k.to(device), v.to(device)
        (kfull,) = lowp_quant._stats(kd, minmax=False)
        kmean = lowp_quant.key_mean(kd)  # what quantize_k removes: the mean of tokens 0, 8, 16, ...
        vm, vs, vinv = lowp_quant._stats(vd, minmax=True)
        kfull, kmean, vm, vs, vinv = (t.cpu().view(B, H, D) for t in (kfull, kmean, vm, vs, vinv))
        kf, vf = (t.float().permute(0, 2, 1, 3) for t in (k, v))  # [B, H, L, D] fp32
        res[f"kmean_rel:{key}"] = _rel(kfull, kf.double().mean(2))
        res[f"kmean_strided_rel:{key}"] = _rel(kmean, kf[:, :, :: lowp_quant.KMEAN_STRIDE].double().mean(2))
        res[f"vmean_rel:{key}"] = _rel(vm, vf.double().mean(2))
        # min / max are exact in any order, so scale and inverse follow bit-exactly from the mean
        amax = torch.maximum(vf.amax(2) - vm, vm - vf.amin(2)).clamp(min=1e-8)
        res[f"vscale_rel:{key}"] = _rel(vs, amax / 448.0)
        res[f"vinv_rel:{key}"] = _rel(vinv, 448.0 / amax)

        k8, ks = (t.cpu() for t in lowp_quant.quantize_k(kd))
        v8, vm2, vs2 = (t.cpu() for t in lowp_quant.quantize_v(vd))
        res[f"v_stats_repeat:{key}"] = float(
            (vm2.view(B, H, D) != vm).sum() + (vs2.view(B, H, D) != vs).sum()
        )
        lp = k8.shape[1]
        # K emulation in fp32: centre, pad to blocks of 128, amax per block, round half away from zero
        kc = torch.zeros(B, H, lp, D)
        kc[:, :, :L] = kf - kmean[:, :, None]
        kamax = kc.view(B, H, lp // 128, 128 * D).abs().amax(-1).clamp(min=1e-8)  # [B, H, LP/128]
        y = kc * (127.0 / kamax).repeat_interleave(128, -1)[..., None]
        kref = torch.where(y >= 0, y + 0.5, y - 0.5).to(torch.int8)
        k8 = k8.view(B, H, lp, D)
        res[f"k8_mismatch:{key}"] = float((k8 != kref).double().mean())
        res[f"k8_maxdiff:{key}"] = float((k8.int() - kref.int()).abs().max())
        res[f"ks_rel:{key}"] = _rel(ks.view(B, H, -1), kamax / 127.0)
        # V emulation in fp32, transposed [B, H, D, LP]
        yv = torch.zeros(B, H, lp, D)
        yv[:, :, :L] = (vf - vm[:, :, None]) * vinv[:, :, None]
        vref = yv.clamp(-448.0, 448.0).to(torch.float8_e4m3fn).transpose(2, 3)
        v8 = v8.view(B, H, D, lp)
        res[f"v8_mismatch:{key}"] = float((v8.view(torch.uint8) != vref.view(torch.uint8)).double().mean())
        res[f"v8_maxrel:{key}"] = _rel(v8.float(), vref.float())
        res[f"pad_nonzero:{key}"] = float(k8[:, :, L:].abs().sum() + v8[..., L:].float().abs().sum())
        # the same V^T with each block's keys in key_order: the same bytes, moved
        v8o = lowp_quant.quantize_v(vd, key_order=True)[0].cpu().view(B, H, D, lp)
        pos = torch.arange(lp) // 128 * 128 + lowp_quant.key_order().repeat(lp // 128)
        res[f"v8_key_order_moved:{key}"] = float((v8o[..., pos].view(torch.uint8) != v8.view(torch.uint8)).sum())
    return res


if __name__ == "__main__":
    print(json.dumps(prologue_cases("cpu", torch.float16)))
    sys.stdout.flush()
