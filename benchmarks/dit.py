"""One Wan DIT forward on a GPU: time (CUDA events, median after warm-up) and peak memory, as JSON + markdown.

Weights are seeded random (``random_dit``), built directly on the GPU in the run dtype; with ``--quant``
the block linears are quantized online from the same random weights. Example (H100, ~1 minute):

    PYTHONPATH=. python benchmarks/dit.py --model wan2.1-t2v-14b --res 480p --out benchmarks/results

Speed options (docs/speed.md): ``--attention``, ``--cross-attention``, ``--fused on|off|auto``, ``--compile``.
``--plan quick|default|full`` runs many configurations in one process (benchmarks/dit_plan.py): ours in
bf16 and quantized, each attention backend, fused / compiled, and the diffusers peer (bf16 and torchao
float8, compiled), with one-step quality against our bf16 forward; ``default`` fits ~8 minutes on an H100.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from lightx2v_quant.models.wan import WanDiTConfig, random_dit
from lightx2v_quant.models.wan.dit_config import PRESETS
from lightx2v_quant.models.wan.speed import configure_dit
from lightx2v_quant.quant.apply import kernels_used, prepare_model

# video size -> latent H, W (VAE stride 8); 81 frames -> 21 latent frames
RESOLUTIONS = {"480p": (480, 832), "720p": (720, 1280)}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
GIB = 1024**3


def latent_shape(res: str, frames: int) -> tuple[int, int, int]:
    h, w = RESOLUTIONS[res]
    return (frames - 1) // 4 + 1, h // 8, w // 8


def forward_flops(cfg: WanDiTConfig, tokens: int, ctx_tokens: int) -> float:
    """Multiply-adds x 2 of the block matmuls and attention (embeddings and head are negligible)."""
    d, f = cfg.dim, cfg.ffn_dim
    per_block = 2 * tokens * (4 * d * d + 2 * d * d + 2 * d * f)  # self q/k/v/o, cross q/o, FFN
    per_block += 2 * ctx_tokens * 2 * d * d  # cross k/v on the context
    per_block += 2 * 2 * tokens * tokens * d + 2 * 2 * tokens * ctx_tokens * d  # QK^T and PV
    return float(per_block * cfg.num_layers)


def make_inputs(cfg: WanDiTConfig, latent: tuple[int, int, int], dtype: torch.dtype, seed: int,
                device: torch.device) -> dict:
    g = torch.Generator(device).manual_seed(seed)
    inp = {
        "x": torch.randn(1, 16, *latent, generator=g, device=device),
        "t": torch.tensor([999.0], device=device),
        "context": torch.randn(1, cfg.text_len, cfg.text_dim, generator=g, device=device).to(dtype),
    }
    if cfg.in_dim > 16:
        inp["y"] = torch.randn(1, cfg.in_dim - 16, *latent, generator=g, device=device)
    if cfg.image_dim is not None:
        inp["clip_fea"] = torch.randn(1, 257, cfg.image_dim, generator=g, device=device).to(dtype)
    return inp


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_ms(fn, device: torch.device) -> tuple[float, torch.Tensor]:
    """Run ``fn`` once; milliseconds from CUDA events on a GPU (wall clock on a CPU) and its result."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end), out
    t0 = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t0) * 1e3, out


def _device_info(device: torch.device) -> dict:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"device": props.name, "capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda}
    return {"device": platform.processor() or platform.machine() or "cpu", "capability": None, "cuda": None}


def run(args: argparse.Namespace) -> dict:
    cfg = WanDiTConfig.preset(args.model)
    dtype = DTYPES[args.dtype]
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    latent = latent_shape(args.res, args.frames)
    tokens = math.prod(s // p for s, p in zip(latent, cfg.patch_size))

    t0 = time.perf_counter()
    model = random_dit(cfg, dtype, device, seed=args.seed, quant=args.quant,
                       sensitive_fp32=args.sensitive_fp32, attention_backend=args.attention)
    prepare_model(model)
    speed = configure_dit(model, attention=args.attention, cross_attention=args.cross_attention,
                          fused={"on": True, "off": False, "auto": None}[args.fused], compile=args.compile)
    _sync(device)
    build_s = time.perf_counter() - t0
    weights_gib = torch.cuda.memory_allocated(device) / GIB if cuda else None
    inp = make_inputs(cfg, latent, dtype, args.seed, device)

    with torch.inference_mode():
        for _ in range(args.warmup):
            model(**inp)
        _sync(device)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        times_ms = []
        for _ in range(args.iters):
            ms, out = _timed_ms(lambda: model(**inp), device)
            times_ms.append(ms)
    # peak of torch.cuda.max_memory_allocated over the timed forwards, weights included
    peak_gib = torch.cuda.max_memory_allocated(device) / GIB if cuda else None
    median_ms = statistics.median(times_ms)
    flops = forward_flops(cfg, tokens, cfg.text_len + (257 if cfg.image_dim else 0))
    return {
        "benchmark": "dit_forward",
        "model": args.model,
        "weights": f"random (seed {args.seed}); speed and memory do not depend on the values",
        "res": args.res,
        "frames": args.frames,
        "latent": [16, *latent],
        "tokens": tokens,
        "dtype": args.dtype,
        "sensitive_fp32": args.sensitive_fp32,
        "quant": args.quant,
        "kernels": kernels_used(model),
        "attention": args.attention,
        "speed": speed,
        "warmup": args.warmup,
        "iters": args.iters,
        "times_ms": [round(t, 2) for t in times_ms],
        "median_ms": round(median_ms, 2),
        "min_ms": round(min(times_ms), 2),
        "tflops_est": round(flops / (median_ms / 1e3) / 1e12, 3),
        "weights_gib": None if weights_gib is None else round(weights_gib, 2),
        "peak_gib": None if peak_gib is None else round(peak_gib, 2),
        "build_s": round(build_s, 1),
        "output_finite": bool(torch.isfinite(out).all()),
        "output_std": round(float(out.float().std()), 4),
        **_device_info(device),
        "torch": torch.__version__,
    }


def markdown(r: dict) -> str:
    quant = r["quant"] or f"none ({r['dtype']})"
    return "\n".join([
        f"# Wan DIT forward: {r['model']} {r['res']} ({r['tokens']} tokens), {r['device']}",
        "",
        ("| model | res | tokens | quant | attention | median ms | min ms | est. TFLOPS | weights GiB "
         "| peak GiB |"),
        "|---|---|---|---|---|---|---|---|---|---|",
        (f"| {r['model']} | {r['res']} | {r['tokens']} | {quant} | {r['attention']} | {r['median_ms']} | "
         f"{r['min_ms']} | {r['tflops_est']} | {r['weights_gib']} | {r['peak_gib']} |"),
        "",
        (f"{r['weights']}. torch {r['torch']}, CUDA {r['cuda']}, compute capability {r['capability']}; "
         f"median of {r['iters']} after {r['warmup']} warm-up; latent {r['latent']}."),
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="wan2.1-t2v-14b", choices=sorted(PRESETS))
    p.add_argument("--res", default="480p", choices=sorted(RESOLUTIONS))
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--sensitive-fp32", action="store_true",
                   help="keep norms / embeddings / modulation / head in fp32")
    p.add_argument("--quant", default=None,
                   help="scheme name, e.g. fp8-torch (online-quantized random weights)")
    p.add_argument("--attention", default="sdpa", help="self-attention backend (docs/speed.md)")
    p.add_argument("--cross-attention", default=None, help="cross-attention backend (default: --attention)")
    p.add_argument("--fused", default="auto", choices=["auto", "on", "off"],
                   help="fused Triton norm / RoPE / residual kernels (auto: on CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile each DIT block (fullgraph)")
    p.add_argument("--plan", default=None, choices=["quick", "default", "full"],
                   help="run a plan of many configurations (benchmarks/dit_plan.py) instead of one")
    p.add_argument("--only", nargs="*", default=None, help="with --plan: entries whose name contains one of these (ending in $: the whole name)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda", help="cuda (the benchmark) or cpu (to try the script)")
    p.add_argument("--out", required=True, help="folder for the JSON and markdown results")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("benchmarks/dit.py: no CUDA GPU here (use --device cpu with a tiny model to try it)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.plan:
        return _run_plan(args, out)
    result = run(args)
    stem = f"dit_{args.model}_{args.res}_{args.quant or args.dtype}"
    if args.frames != 81:
        stem += f"_{args.frames}f"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (out / f"{stem}.md").write_text(markdown(result))
    print(json.dumps(result, indent=2))
    return 0


def _run_plan(args: argparse.Namespace, out: Path) -> int:
    from benchmarks.dit_plan import run_plan, table

    if not args.device.startswith("cuda"):
        print("--plan runs on a CUDA GPU", file=sys.stderr)
        return 2
    info = _device_info(torch.device(args.device))
    results = run_plan(args.plan, args.model, args.seed, out, make_inputs, latent_shape, forward_flops, info,
                       only=args.only)
    text = table(results, info["device"])
    (out / f"dit_plan_{args.plan}.md").write_text(text)
    print(text)
    return 0 if all("median_ms" in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
