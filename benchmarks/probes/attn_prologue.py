"""Probe: the low-precision attention's quantization prologue (lowp_quant) against another version of
that module (``--baseline FILE``), at Wan-14B's 480p self-attention shape (1 x 32760 x 40 x 128 bf16).

    git show e265cd8:lightx2v_quant/attention/lowp_quant.py > /tmp/lowp_quant_e265cd8.py  # the old kernels
    PYTHONPATH=. python benchmarks/probes/attn_prologue.py --baseline /tmp/lowp_quant_e265cd8.py \
        --out $OUT/attn_prologue.json [--sweep]

Per stage (stats = statistics pass incl. the new finalize kernel; quant_k / quant_v = the quantization
kernel alone on precomputed statistics; *_total = the public function): ms (triton.testing.do_bench) and
effective TB/s (bytes the stage must move: bf16 read + int8 / fp8 written). Numerics: new vs baseline
(identical int8 Q; K / V bytes that differ because the fp32 channel sums are added in another order) and
both vs a float64 torch reference of the same quantization. ``--sweep`` also times other statistics
configurations and warp counts of the quantization kernels (for tuning; defaults are the module's).
``--device cpu`` (with TRITON_INTERPRET=1 and a small --shape) smoke-tests the probe itself: one call per
stage, wall-clock times of the interpreter (meaningless as speed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def _ms(fn, device: str) -> float:
    import triton

    if device == "cpu":
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    return float(triton.testing.do_bench(fn, warmup=10, rep=60))


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> dict[str, torch.Tensor]:
    """The tests' float64 quantization (tests/attention/lowp_cases.py) in the kernels' output layouts:
    q8 / k8 [BH, L, D] (float64 integers), v8 [BH, D, L] fp8, V's mean and scale [BH, D]."""
    from tests.attention.lowp_cases import reference_quantize

    B, L, H, D = q.shape
    r = reference_quantize(q, k, v)

    def heads(t):  # [B, L, H, D] -> [BH, L, D]
        return t.permute(0, 2, 1, 3).reshape(B * H, t.shape[1], D)

    return {
        "q8": heads(r["q8"]),
        "k8": heads(r["k8"]),
        "v8": heads(r["v8"]).transpose(1, 2).to(torch.float8_e4m3fn),
        "v_mean": heads(r["vm"])[:, 0],
        "v_scale": heads(r["vs"])[:, 0],
    }


def _numerics(new, old, ref, L: int) -> dict[str, float]:
    def rel(a, b):
        return float((a.double() - b.double()).abs().max() / b.double().abs().max())

    q8, k8, ks, v8, vm, vs = new
    oq8, ok8, oks, ov8, ovm, ovs = old
    out = {
        "q8_diff_vs_baseline": int((q8 != oq8).sum()),
        "k8_diff_vs_baseline": int((k8 != ok8).sum()),
        "k8_maxdiff_vs_baseline": int((k8.int() - ok8.int()).abs().max()),
        "k_scale_maxrel_vs_baseline": rel(ks, oks),
        "v8_diff_vs_baseline": int((v8.view(torch.uint8) != ov8.view(torch.uint8)).sum()),
        "v_mean_maxrel_vs_baseline": rel(vm, ovm),
        "v_scale_maxrel_vs_baseline": rel(vs, ovs),
        "elements": int(k8[:, :L].numel()),
    }
    for tag, (tq8, tk8, tv8, tvm, tvs) in (
        ("new", (q8, k8, v8, vm, vs)),
        ("baseline", (oq8, ok8, ov8, ovm, ovs)),
    ):
        out[f"{tag}_q8_mismatch_vs_f64"] = float((tq8[:, :L].double() != ref["q8"]).double().mean())
        out[f"{tag}_k8_mismatch_vs_f64"] = float((tk8[:, :L].double() != ref["k8"]).double().mean())
        v8b = tv8[:, :, :L].contiguous().view(torch.uint8)
        out[f"{tag}_v8_mismatch_vs_f64"] = float(
            (v8b != ref["v8"].contiguous().view(torch.uint8)).double().mean()
        )
        out[f"{tag}_v_mean_maxrel_vs_f64"] = rel(tvm, ref["v_mean"])
        out[f"{tag}_v_scale_maxrel_vs_f64"] = rel(tvs, ref["v_scale"])
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--shape", default="1,32760,40,128", help="B,L,H,D")
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--baseline", required=True, help="a lowp_quant.py to compare with (e.g. from git show)")
    p.add_argument("--device", default="cuda")
    a = p.parse_args()
    dev = a.device
    if dev == "cuda" and not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    import importlib.util

    import triton

    # Triton reads the kernels' source from the file, so the baseline is imported from its path
    spec = importlib.util.spec_from_file_location("lowp_quant_baseline", a.baseline)
    old_m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old_m)

    from lightx2v_quant.attention import lowp_quant as m

    B, L, H, D = (int(x) for x in a.shape.split(","))
    gen = torch.Generator(dev).manual_seed(0)
    offset = 2.0 * torch.randn(D, device=dev, generator=gen)  # channel offsets, as real K / V have

    def make(off):
        return (torch.randn(B, L, H, D, device=dev, generator=gen) + off).to(torch.bfloat16)

    q, k, v = make(0.0), make(offset), make(-offset)
    sm_scale = D**-0.5 * 1.4426950408889634
    lp = triton.cdiv(L, 128) * 128
    n = B * L * H * D  # elements per tensor
    nb = n * 2  # bf16 bytes read
    strides = (k.stride(0), k.stride(1), k.stride(2))
    grid = (lp // 128, B * H)
    k8 = torch.empty(B * H, lp, D, device=dev, dtype=torch.int8)
    ks = torch.empty(B * H, lp // 128, device=dev, dtype=torch.float32)
    v8 = torch.empty(B * H, D, lp, device=dev, dtype=torch.float8_e4m3fn)
    vm = torch.empty(B * H, D, device=dev, dtype=torch.float32)
    vs = torch.empty_like(vm)

    # new: stages on precomputed statistics
    (kmean,) = m._stats(k, minmax=False)
    vmean, _, vinv = m._stats(v, minmax=True)

    def new_quant_k(warps=8):
        m._quant_k_kernel[grid](k, kmean, k8, ks, L, lp, H, *strides, D=D, BLOCK=128, num_warps=warps)

    def new_quant_v(warps=8):
        m._quant_v_kernel[grid](v, vmean, vinv, v8, L, lp, H, *strides, D=D, BLOCK=128, num_warps=warps)

    # baseline: same stages with its kernels
    nsk, ksum = old_m._stats(k, minmax=False)
    nsv, vsum, vmin, vmax = old_m._stats(v, minmax=True)
    p2k, p2v = triton.next_power_of_2(nsk), triton.next_power_of_2(nsv)

    def old_quant_k():
        old_m._quant_k_kernel[grid](
            k, ksum, k8, ks, L, lp, H, *strides, nsk, NSPLIT_P2=p2k, D=D, BLOCK=128, num_warps=8
        )

    def old_quant_v():
        old_m._quant_v_kernel[grid](
            v,
            vsum,
            vmin,
            vmax,
            v8,
            vm,
            vs,
            L,
            lp,
            H,
            *strides,
            nsv,
            NSPLIT_P2=p2v,
            D=D,
            BLOCK=128,
            num_warps=8,
        )

    out_bytes = n + 4 * B * H * (lp // 128)  # int8 / fp8 values (+ K scales; others negligible)
    stages = {
        "stats_sum": (nb, lambda: m._stats(k, False), lambda: old_m._stats(k, False)),
        "stats_minmax": (nb, lambda: m._stats(v, True), lambda: old_m._stats(v, True)),
        "quant_q": (nb + n, lambda: m.quantize_q(q, sm_scale), lambda: old_m.quantize_q(q, sm_scale)),
        "quant_k": (nb + out_bytes, new_quant_k, old_quant_k),
        "quant_v": (nb + n, new_quant_v, old_quant_v),
        "quant_k_total": (2 * nb + out_bytes, lambda: m.quantize_k(k), lambda: old_m.quantize_k(k)),
        "quant_v_total": (2 * nb + n, lambda: m.quantize_v(v), lambda: old_m.quantize_v(v)),
    }
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu (Triton interpreter)"
    res: dict = {"device": name, "shape": [B, L, H, D], "stages": {}}
    for name, (nbytes, new_fn, old_fn) in stages.items():
        t_new, t_old = _ms(new_fn, dev), _ms(old_fn, dev)
        res["stages"][name] = {
            "new_ms": t_new,
            "baseline_ms": t_old,
            "new_TBps": nbytes / t_new / 1e9,
            "baseline_TBps": nbytes / t_old / 1e9,
        }
        print(
            f"{name:<14} new {t_new:7.4f} ms {nbytes / t_new / 1e9:5.2f} TB/s | "
            f"baseline {t_old:7.4f} ms {nbytes / t_old / 1e9:5.2f} TB/s",
            flush=True,
        )

    if a.sweep:
        sweep = {}
        defaults = (m.STATS_SUM, m.STATS_MINMAX, m.STATS_PROGRAMS)
        for minmax, cfgs in (
            (False, [(32, 4, 3), (32, 4, 4), (32, 4, 6), (64, 8, 4)]),
            (True, [(16, 4, 4), (16, 4, 6), (16, 4, 8), (32, 8, 4)]),
        ):
            for progs in (2048, 4096):
                for cfg in cfgs:
                    m.STATS_PROGRAMS = progs
                    if minmax:
                        m.STATS_MINMAX = cfg
                    else:
                        m.STATS_SUM = cfg
                    key = f"stats_{'minmax' if minmax else 'sum'}_sub{cfg[0]}_w{cfg[1]}_s{cfg[2]}_p{progs}"
                    sweep[key] = _ms(lambda mm=minmax: m._stats(v if mm else k, mm), dev)
                    print(f"{key:<36} {sweep[key]:.4f} ms {nb / sweep[key] / 1e9:5.2f} TB/s", flush=True)
            m.STATS_SUM, m.STATS_MINMAX, m.STATS_PROGRAMS = defaults
        for warps in (4, 8, 16):
            for name, fn in (("quant_k", new_quant_k), ("quant_v", new_quant_v)):
                key = f"{name}_w{warps}"
                sweep[key] = _ms(lambda f=fn, w=warps: f(w), dev)
                print(f"{key:<36} {sweep[key]:.4f} ms", flush=True)
        res["sweep_ms"] = sweep

    new = (*m.quantize_q(q, sm_scale), *m.quantize_k(k), *m.quantize_v(v))
    old = (*old_m.quantize_q(q, sm_scale), *old_m.quantize_k(k), *old_m.quantize_v(v))
    new = (new[0], new[2], new[3], new[4], new[5], new[6])
    old = (old[0], old[2], old[3], old[4], old[5], old[6])
    ref = _reference(q, k, v)
    res["numerics"] = _numerics(new, old, ref, L)
    for key, val in res["numerics"].items():
        print(f"{key:<34} {val}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
