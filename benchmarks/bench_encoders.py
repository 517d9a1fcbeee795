"""Benchmark the Wan text (umT5-XXL) and image (CLIP ViT-H/14) encoders on one GPU, per quant scheme.

Random weights (seeded; the same weights for every scheme, so the SQNR column is the quantization error
of the whole encoder). Writes JSON with the device name:

    python benchmarks/bench_encoders.py --out benchmarks/results/encoders_h100.json \
        [--schemes none int8-torch fp8-torch] [--iters 10]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from lightx2v_quant.models.wan import (
    ByteTokenizer,
    ClipConfig,
    T5Config,
    TextEncoder,
    random_clip,
    random_t5,
)
from lightx2v_quant.quant.apply import kernels_used, weight_bytes

PROMPT = ("A cat walks on the grass, realistic style. The camera follows it slowly at golden hour, "
          "soft light, shallow depth of field, detailed fur.")


def _time(fn: Callable[[], torch.Tensor], iters: int) -> tuple[float, torch.Tensor]:
    out = fn()
    for _ in range(2):
        out = fn()  # warm-up (kernel prepare, autotuning)
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, out


def _sqnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double(), ref.double()
    return float(10 * torch.log10(ref.pow(2).sum() / (x - ref).pow(2).sum().clamp(min=1e-30)))


def _free() -> None:
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def bench_t5(cfg: T5Config, schemes: list[str], iters: int) -> list[dict]:
    rows, ref = [], None
    tok = ByteTokenizer()  # token ids only drive the timing; lengths are what matter
    ids, mask = tok([PROMPT])
    n_tokens = int(mask.sum())
    for scheme in schemes:
        _free()
        row: dict = {"component": "t5", "scheme": scheme, "tokens": n_tokens}
        try:
            t0 = time.perf_counter()
            model = random_t5(cfg, "bf16", device="cuda", seed=0, quant=None if scheme == "none" else scheme)
            torch.cuda.synchronize()
            row["build_s"] = round(time.perf_counter() - t0, 2)
            row["weight_gb"] = round(weight_bytes(model) / 1e9, 3)
            row["kernels"] = kernels_used(model)
            enc = TextEncoder(model, tok)
            full = TextEncoder(model, tok, full_length=True)
            with torch.no_grad():
                row["encode_trimmed_ms"], out = _time(lambda: enc.encode([PROMPT])[0], iters)
                row["encode_512_ms"], _ = _time(lambda: full.encode([PROMPT])[0], iters)
            row["peak_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 3)
            out = out.float().cpu()
            if scheme == "none":
                ref = out
            elif ref is not None:
                row["sqnr_db_vs_none"] = round(_sqnr(out, ref), 2)
            del model, enc, full
        except Exception as exc:  # record and go on: one missing kernel library must not hide the rest
            row["error"] = f"{type(exc).__name__}: {exc}"
        rows.append(row)
        print(json.dumps(row))
    return rows


def bench_clip(cfg: ClipConfig, schemes: list[str], iters: int) -> list[dict]:
    rows, ref = [], None
    img = (torch.rand(3, 1, 480, 832, generator=torch.Generator().manual_seed(0)) * 2 - 1).cuda()
    for scheme in schemes:
        _free()
        row: dict = {"component": "clip", "scheme": scheme, "image": [480, 832]}
        try:
            t0 = time.perf_counter()
            model = random_clip(cfg, "fp16", device="cuda", seed=0, quant=None if scheme == "none" else scheme)
            torch.cuda.synchronize()
            row["build_s"] = round(time.perf_counter() - t0, 2)
            row["weight_gb"] = round(weight_bytes(model) / 1e9, 3)
            row["kernels"] = kernels_used(model)
            with torch.no_grad():
                row["encode_ms"], out = _time(lambda: model.encode(img), iters)
            row["peak_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 3)
            out = out.float().cpu()
            if scheme == "none":
                ref = out
            elif ref is not None:
                row["sqnr_db_vs_none"] = round(_sqnr(out, ref), 2)
            del model
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
        rows.append(row)
        print(json.dumps(row))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="JSON file to write")
    parser.add_argument("--schemes", nargs="+", default=["none", "int8-torch", "fp8-torch"])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--t5", default="umt5-xxl", help="T5 preset (umt5-xxl | tiny)")
    parser.add_argument("--clip", default="vit-h-14", help="CLIP preset (vit-h-14 | tiny)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_encoders needs a CUDA GPU")
    if "none" in args.schemes:  # the reference first, so every quantized row gets its SQNR
        args.schemes = ["none"] + [s for s in args.schemes if s != "none"]
    result = {
        "benchmark": "encoders",
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "weights": "random (seeded); same weights for every scheme",
        "t5_preset": args.t5,
        "clip_preset": args.clip,
        "rows": bench_t5(T5Config.preset(args.t5), args.schemes, args.iters)
        + bench_clip(ClipConfig.preset(args.clip), args.schemes, args.iters),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
