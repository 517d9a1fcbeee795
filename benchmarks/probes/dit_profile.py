"""Probe: where the GPU time of one Wan-14B DIT forward goes (random weights, 480p), per kernel.

    PYTHONPATH=. python benchmarks/probes/dit_profile.py --out $OUT/dit_profile.json \\
        --configs bf16:sdpa fp8-triton:sdpa int8-triton:int8qk-fp8pv

Each config is ``quant:attention`` (quant ``bf16`` = unquantized); ``--compile`` compiles the blocks and
``--residual run_dtype`` keeps a bf16 stream (the fastest settings). After two warm-up forwards (autotuning, compilation),
one forward runs under ``torch.profiler``: the JSON lists the kernels by total GPU time, their share of
the forward, and the forward's wall time against the summed kernel time (the gap is launch / CPU time
the GPU spent idle). ``--sustain SECONDS`` then runs forwards back to back for that long with the board
power and SM clock sampled by nvidia-smi every 0.2 s (``attn_variants.Sampler``): mean and range of both,
and the share of samples within 3% of the highest power seen (the cap, when the GPU sits at it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from benchmarks.dit import latent_shape, make_inputs
from lightx2v_quant.models.wan import WanDiTConfig, random_dit
from lightx2v_quant.models.wan.speed import configure_dit
from lightx2v_quant.quant.apply import prepare_model


def profile(
    quant: str, attention: str, residual: str, top: int, compile: bool = False, fuse_gelu: bool = False,
    sustain: float = 0.0,
) -> dict:
    cfg = WanDiTConfig.preset("wan2.1-t2v-14b")
    model = random_dit(cfg, torch.bfloat16, "cuda", seed=0, quant=None if quant == "bf16" else quant)
    prepare_model(model)
    speed = configure_dit(
        model, attention=attention, cross_attention="sdpa", fused=True, residual=residual, compile=compile,
        fuse_gelu=fuse_gelu,
    )
    inp = make_inputs(cfg, latent_shape("480p", 81), torch.bfloat16, 0, torch.device("cuda"))
    with torch.inference_mode():
        model(**inp)  # warm-up: autotuning, compilation
        model(**inp)
        torch.cuda.synchronize()
        start = time.perf_counter()
        model(**inp)
        torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - start) * 1e3
        acts = [torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=acts) as prof:
            model(**inp)
            torch.cuda.synchronize()
        power = _sustained(model, inp, sustain) if sustain > 0 else None
    kernels = [
        {"name": e.key[:160], "ms": e.device_time_total / 1e3, "count": e.count}
        for e in prof.key_averages()
        if e.device_time_total > 0
    ]
    kernels.sort(key=lambda k: -k["ms"])
    total = sum(k["ms"] for k in kernels)
    for k in kernels:
        k["share"] = round(k["ms"] / total, 4)
    del model
    torch.cuda.empty_cache()
    return {
        "quant": quant,
        "attention": attention,
        "residual": residual,
        "compile": compile,
        "fuse_gelu": fuse_gelu,
        "speed": {k: str(v) for k, v in speed.items()},
        "wall_ms": round(wall_ms, 1),
        "kernel_ms": round(total, 1),
        "kernels": kernels[:top],
        "sustained": power,
    }


def _sustained(model, inp: dict, seconds: float) -> dict:
    """Forwards back to back for ``seconds`` (``attn_variants.Sampler.sustained``, one forward per host
    sync): ms per forward, and board power / SM clock over them with their ranges."""
    from benchmarks.probes.attn_variants import Sampler

    sampler = Sampler()
    t0 = time.time()
    res = sampler.sustained(lambda: model(**inp), seconds, batch=1)
    res.update(sampler.spread(t0 + 1.0, time.time()))
    sampler.stop()
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["bf16:sdpa", "fp8-triton:sdpa"])
    p.add_argument("--residual", default="fp32", choices=["fp32", "run_dtype"])
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--compile", action="store_true", help="torch.compile every block (speed.compile=true)")
    p.add_argument("--fuse-gelu", action="store_true", help="the FFN's fused GELU + quantization kernel")
    p.add_argument("--sustain", type=float, default=0.0, help="seconds of back-to-back forwards with power sampling")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    runs = []
    for item in a.configs:
        quant, attention = item.split(":")
        run = profile(quant, attention, a.residual, a.top, a.compile, a.fuse_gelu, a.sustain)
        runs.append(run)
        print(f"{item}: wall {run['wall_ms']} ms, kernels {run['kernel_ms']} ms", flush=True)
        if run["sustained"]:
            print(f"   sustained: {run['sustained']}", flush=True)
        for k in run["kernels"][:25]:
            print(f"   {k['ms']:9.1f} ms {k['share']:6.1%} x{k['count']:<5} {k['name'][:110]}", flush=True)
    with open(a.out, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "runs": runs}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
