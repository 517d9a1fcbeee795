"""Tune and time our Triton kernels at Wan's GEMM shapes against bf16 F.linear (GPU).

For every shape and `-triton` scheme: the tile config the autotuner chose (and every candidate's time),
the time of the full QuantLinear call (activation quantization included) and of the GEMM alone, the
ratio to bf16 F.linear measured in the same run, TFLOP/s, and the relative error against the format's
reference on the first rows. Results are written as JSON (device name included) after each shape.

    PYTHONPATH=. python benchmarks/triton_tune.py --out benchmarks/results/triton_h100.json
    PYTHONPATH=. python benchmarks/triton_tune.py --out r.json --shapes t5 clip --schemes fp8-triton

Timing: ``triton.testing.do_bench`` median (L2 flushed before each call, so launch overhead is mostly
hidden), and ``loop`` = mean of back-to-back calls (what a CPU-bound small GEMM really costs).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SHAPES: dict[str, tuple[int, int, int]] = {  # name -> (M tokens, N out, K in)
    "14b-480p-qkvo": (32760, 5120, 5120),
    "14b-480p-ffn-up": (32760, 13824, 5120),
    "14b-480p-ffn-down": (32760, 5120, 13824),
    "14b-720p-qkvo": (75600, 5120, 5120),
    "14b-720p-ffn-up": (75600, 13824, 5120),
    "14b-720p-ffn-down": (75600, 5120, 13824),
    "1.3b-480p-qkvo": (32760, 1536, 1536),
    "1.3b-480p-ffn-up": (32760, 8960, 1536),
    "1.3b-480p-ffn-down": (32760, 1536, 8960),
    "t5-ffn-up": (512, 10240, 4096),
    "t5-ffn-down": (512, 4096, 10240),
    "t5-qkvo": (512, 4096, 4096),
    "clip-fc1": (257, 5120, 1280),
    "clip-fc2": (257, 1280, 5120),
    "clip-qkvo": (257, 1280, 1280),
    "time-projection": (1, 30720, 5120),
    "time-embedding": (2, 5120, 5120),
}
GROUPS = {
    "dit14b-480p": ["14b-480p-qkvo", "14b-480p-ffn-up", "14b-480p-ffn-down"],
    "dit14b-720p": ["14b-720p-qkvo", "14b-720p-ffn-up", "14b-720p-ffn-down"],
    "dit1.3b": ["1.3b-480p-qkvo", "1.3b-480p-ffn-up", "1.3b-480p-ffn-down"],
    "t5": ["t5-ffn-up", "t5-ffn-down", "t5-qkvo"],
    "clip": ["clip-fc1", "clip-fc2", "clip-qkvo"],
    "small": ["time-projection", "time-embedding"],
}
SCHEMES = ["fp8-triton", "int8-triton", "fp8-b128-triton", "int4-g128-triton"]
TUNING_KIND = {  # format -> first two fields of the tuner's key (GEMM kind, operand dtype)
    "w8a8-fp8-channel": ("w8a8", "torch.float8_e4m3fn"),
    "w8a8-int8-channel": ("w8a8", "torch.int8"),
    "w8a8-fp8-block128": ("fp8-block128", "torch.float8_e4m3fn"),
    "w4a16-int4-g128": ("w4a16", "torch.bfloat16"),
}
TARGETS = {"dit14b-480p": {"fp8": 1.65, "int8": 1.5, "int4-g128": 0.8}, "t5-ffn-up": 1.4, "clip-fc1": 0.95}


def _bench(fn, rep_ms: int) -> float:
    import triton

    return float(triton.testing.do_bench(fn, warmup=max(10, rep_ms // 4), rep=rep_ms, return_mode="median"))


def _loop_ms(fn, iters: int = 50) -> float:
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def _rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    y, ref = y.double(), ref.double()
    return float((y - ref).norm() / ref.norm())


def run_shape(name: str, schemes: list[str], rep_ms: int) -> list[dict]:
    m, n, k = SHAPES[name]
    flop = 2.0 * m * n * k
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    linear = torch.nn.Linear(k, n, bias=True, device="cuda", dtype=torch.bfloat16)
    torch.nn.init.normal_(linear.weight, std=k**-0.5)
    w, b = linear.weight.detach(), linear.bias.detach()
    bf16_ms = _bench(lambda: F.linear(x, w, b), rep_ms)
    bf16_loop = _loop_ms(lambda: F.linear(x, w, b))
    rows = []
    print(
        f"\n{name}: M={m} N={n} K={k}  bf16 F.linear {bf16_ms:.4f} ms ({flop / bf16_ms / 1e9:.0f} TFLOP/s), "
        f"loop {bf16_loop:.4f} ms",
        flush=True,
    )
    for scheme in schemes:
        rows.append(_run_scheme(name, x, linear, scheme, bf16_ms, bf16_loop, rep_ms))
    return rows


def _run_scheme(name, x, linear, scheme: str, bf16_ms: float, bf16_loop: float, rep_ms: int) -> dict:
    from lightx2v_quant.quant.kernels import triton_ops as T
    from lightx2v_quant.quant.kernels.triton_tuning import TUNER, m_bucket
    from lightx2v_quant.quant.linear import QuantLinear

    (m, k), n = x.shape, linear.out_features
    flop = 2.0 * m * n * k
    layer = QuantLinear.from_linear(linear, scheme)
    layer.prepare()
    fmt = layer.format
    keys_before = set(TUNER.records)
    t0 = time.time()
    y = layer(x)
    torch.cuda.synchronize()
    first_call_s = time.time() - t0
    tensors = {"weight": layer.weight, "weight_scale": layer.weight_scale}
    rows_chk = min(m, 256)
    err = _rel(y[:rows_chk], fmt.reference_linear(x[:rows_chk], tensors, layer.bias, torch.float32))
    full_ms = _bench(lambda: layer(x), rep_ms)
    full_loop = _loop_ms(lambda: layer(x))
    gemm_ms = quant_ms = None
    if fmt.name == "w8a8-fp8-block128":
        q, s = T.quantize_per_token_group(x)
        gemm_ms = _bench(
            lambda: T.fp8_block_matmul(q, s, layer.weight, layer.weight_scale, layer.bias, x.dtype), rep_ms
        )
        quant_ms = _bench(lambda: T.quantize_per_token_group(x), rep_ms)
    elif fmt.quantizes_activations:
        q, s = T.quantize_per_token(x, fmt.name)
        gemm_ms = _bench(
            lambda: T.w8a8_matmul(q, s, layer.weight, layer.k_w_scale, layer.bias, x.dtype), rep_ms
        )
        quant_ms = _bench(lambda: T.quantize_per_token(x, fmt.name), rep_ms)
    kind = TUNING_KIND[fmt.name]
    new_keys = [key for key in TUNER.records if key not in keys_before] or [
        key for key in TUNER.records if key[:2] == kind and key[3:6] == (m_bucket(m), n, k)
    ]
    tuning = {"|".join(map(str, key)): TUNER.records[key] for key in new_keys}
    chosen = "; ".join(rec["config"] for rec in tuning.values()) or "?"
    row = dict(
        shape=name,
        m=m,
        n=n,
        k=k,
        scheme=scheme,
        format=fmt.name,
        config=chosen,
        bf16_ms=bf16_ms,
        bf16_loop_ms=bf16_loop,
        ms=full_ms,
        loop_ms=full_loop,
        gemm_ms=gemm_ms,
        quant_ms=quant_ms,
        ratio=bf16_ms / full_ms,
        loop_ratio=bf16_loop / full_loop,
        gemm_ratio=bf16_ms / gemm_ms if gemm_ms else None,
        tflops=flop / full_ms / 1e9,
        rel_err=err,
        first_call_s=first_call_s,
        tuning=tuning,
    )
    gemm_txt = f" gemm {gemm_ms:.4f} ms ({row['gemm_ratio']:.2f}x) quant {quant_ms:.4f} ms" if gemm_ms else ""
    print(
        f"  {scheme:17s} {full_ms:.4f} ms  {row['ratio']:.2f}x  loop {row['loop_ratio']:.2f}x  "
        f"{row['tflops']:.0f} TFLOP/s{gemm_txt}  err {err:.1e}  [{chosen}]  "
        f"first call {first_call_s:.1f}s",
        flush=True,
    )
    return row


def summarize(rows: list[dict]) -> list[str]:
    lines = [
        "",
        "| shape | scheme | ms | x bf16 | loop x | GEMM-only x | TFLOP/s | rel err | config |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        g = f"{r['gemm_ratio']:.2f}" if r["gemm_ratio"] else "-"
        lines.append(
            f"| {r['shape']} | {r['scheme']} | {r['ms']:.4f} | {r['ratio']:.2f} | {r['loop_ratio']:.2f} | "
            f"{g} | {r['tflops']:.0f} | {r['rel_err']:.1e} | {r['config']} |"
        )
    for group, names in GROUPS.items():
        for scheme in SCHEMES:
            sel = [r["ratio"] for r in rows if r["shape"] in names and r["scheme"] == scheme]
            if len(sel) == len(names):
                gm = math.exp(sum(math.log(v) for v in sel) / len(sel))
                lines.append(f"geomean {group} {scheme}: {gm:.3f}x")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON results file")
    parser.add_argument(
        "--shapes",
        nargs="*",
        default=["dit14b-480p", "t5", "clip", "small"],
        help=f"shape names or groups ({', '.join(GROUPS)}, all)",
    )
    parser.add_argument("--schemes", nargs="*", default=SCHEMES, choices=SCHEMES)
    parser.add_argument("--rep-ms", type=int, default=100, help="do_bench repetition time per measurement")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    import triton

    names: list[str] = []
    for item in args.shapes:
        names += list(SHAPES) if item == "all" else GROUPS.get(item, [item])
    unknown = [s for s in names if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shapes {unknown}; shapes: {', '.join(SHAPES)}; groups: {', '.join(GROUPS)}")
    header = dict(
        device=torch.cuda.get_device_name(),
        capability=list(torch.cuda.get_device_capability()),
        torch=torch.__version__,
        triton=triton.__version__,
        rep_ms=args.rep_ms,
        targets=TARGETS,
    )
    print(json.dumps(header))
    rows: list[dict] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in dict.fromkeys(names):
        rows += run_shape(name, args.schemes, args.rep_ms)
        args.out.write_text(json.dumps({**header, "results": rows}, indent=1))
    for line in summarize(rows):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
