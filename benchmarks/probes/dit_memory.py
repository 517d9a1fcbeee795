"""Probe: where the peak GPU memory of one Wan-14B DIT forward comes from. Random weights; forward hooks on
every linear of block 1 record the allocated memory and the peak since the previous event, so the timeline
shows which activation is alive at the peak. JSON to stdout (and --out).

    PYTHONPATH=. python benchmarks/probes/dit_memory.py --quant fp8-triton --attention int8qk-fp8pv
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch

from benchmarks.dit import latent_shape, make_inputs
from lightx2v_quant.models.wan import WanDiTConfig, random_dit
from lightx2v_quant.models.wan.speed import configure_dit
from lightx2v_quant.quant.apply import prepare_model

GIB = 1024**3


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--quant", default="fp8-triton")
    p.add_argument("--attention", default="int8qk-fp8pv")
    p.add_argument("--residual", nargs="+", default=["fp32", "run_dtype"])
    p.add_argument("--compile", action="store_true")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    cfg = WanDiTConfig.preset("wan2.1-t2v-14b")
    model = random_dit(cfg, torch.bfloat16, "cuda", seed=0, quant=a.quant)
    prepare_model(model)
    weights = torch.cuda.memory_allocated() / GIB
    inp = make_inputs(cfg, latent_shape("480p", 81), torch.bfloat16, 0, torch.device("cuda"))
    events: list[dict] = []

    def hook(name: str, when: str):
        def fn(*_):
            torch.cuda.synchronize()
            events.append({
                "at": f"{name} {when}",
                "alloc_gib": round(torch.cuda.memory_allocated() / GIB - weights, 3),
                "peak_since_gib": round(torch.cuda.max_memory_allocated() / GIB - weights, 3),
            })
            torch.cuda.reset_peak_memory_stats()
        return fn

    for name, m in model.blocks[1].named_modules():
        if isinstance(m, torch.nn.Linear) or type(m).__name__ == "QuantLinear":
            m.register_forward_pre_hook(hook(name, "in"))
            m.register_forward_hook(hook(name, "out"))
    model.head.register_forward_pre_hook(hook("head", "in"))
    results = {"device": torch.cuda.get_device_name(), "weights_gib": round(weights, 3), "runs": []}
    for residual in a.residual:
        speed = configure_dit(model, attention=a.attention, cross_attention="sdpa", fused=True,
                              compile=a.compile, residual=residual)
        with torch.inference_mode():
            model(**inp)  # warm-up (autotuning, compile)
            events.clear()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            model(**inp)
            hook("forward", "end")()
        results["runs"].append({
            "residual": residual,
            "speed": speed,
            "peak_forward_gib": round(max(e["peak_since_gib"] for e in events) + weights, 3),
            "tokens": math.prod(s // q for s, q in zip(latent_shape("480p", 81), cfg.patch_size)),
            "events_block1": events[: 40],
        })
    text = json.dumps(results, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
