"""Tune and time our Triton kernels at Wan's GEMM shapes against bf16 F.linear (GPU).

For every shape and `-triton` scheme: the full QuantLinear call (activation quantization included),
the GEMM alone, the quantizer alone (GB/s and share of the GPU's memory bandwidth), the ratio of each to
bf16 ``F.linear``, TFLOP/s, the error against the format's reference, the route the tuner chose for
small M (quantizer + GEMM, or the one-launch kernel), and every tuning candidate's time.

    PYTHONPATH=. python benchmarks/triton_tune.py --out benchmarks/results/triton_h100.json \\
        --tune-file benchmarks/results/triton_tune_h100.json
    PYTHONPATH=. python benchmarks/triton_tune.py --out r.json --shapes t5 clip --schemes fp8-triton

Timing (median of ``--rounds`` interleaved rounds: the GPU clocks down as it heats, so bf16 and every
scheme are measured alternately rather than one after the other):
- ``ms``: ``triton.testing.do_bench`` (L2 flushed before each call, which also lets the CPU run ahead:
  GPU time);
- ``loop_ms``: back-to-back calls, what a model sees when the CPU is the bottleneck (small GEMMs);
- ``cpu_us``: Python + launch time per call (calls enqueued without waiting for the GPU).
With ``--tune-file`` the tuner's choices are read from and written to that file: a second run skips
the timing of candidates (their compilation remains).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from triton_tune_report import GROUPS, SHAPES, summarize, write_markdown  # noqa: E402

SCHEMES = ["fp8-triton", "int8-triton", "fp8-b128-triton", "int4-g128-triton"]
# Memory bandwidth by device name, GB/s (HBM peak); --peak-gbs overrides.
PEAK_GBS = {"H100 80GB HBM3": 3350, "H100 PCIe": 2000, "H100 NVL": 3900, "H200": 4800, "A100": 2039}


def _bench(fn, rep_ms: int) -> float:
    import triton

    return float(triton.testing.do_bench(fn, warmup=max(5, rep_ms // 5), rep=rep_ms, return_mode="median"))


def _loop_ms(fn, iters: int) -> float:
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


def _cpu_us(fn, iters: int) -> float:
    """Wall time per call while only enqueueing (no synchronization inside the timed calls)."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    dt = time.perf_counter() - t0
    torch.cuda.synchronize()
    return dt / iters * 1e6


def _rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    y, ref = y.double(), ref.double()
    return float((y - ref).norm() / ref.norm())


_KINDS = {  # format -> tuner kinds of its launches
    "w8a8-fp8-channel": ("quant", "w8a8", "w8a8-linear"),
    "w8a8-int8-channel": ("quant", "w8a8", "w8a8-linear"),
    "w8a8-fp8-block128": ("fp8-block128",),
    "w4a16-int4-g128": ("w4a16",),
}
_QDTYPE = {"w8a8-fp8-channel": "torch.float8_e4m3fn", "w8a8-int8-channel": "torch.int8"}


def _concerns(key: tuple, fmt: str, m: int, k: int, n: int) -> bool:
    """Whether a tuner key belongs to this (format, shape): its quantizer, GEMM or route."""
    from lightx2v_quant.quant.kernels.triton_tuning import m_bucket, m_class

    if key[0] not in _KINDS[fmt]:
        return False
    if key[0] == "quant":
        return key[1] == fmt and key[3:5] == (m_class(m), k)
    if key[0] == "w8a8" and key[1] != _QDTYPE[fmt]:
        return False
    if key[0] == "w8a8-linear" and key[1] != fmt:
        return False
    tail = (m_bucket(m), n, k)
    return any(key[i : i + 3] == tail for i in range(len(key) - 2))


def _peak_gbs(override: float | None) -> float | None:
    if override:
        return override
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_GBS.items() if k in name), None)


class Case:
    """One (shape, scheme): the layer, its callables, and the measurements collected over rounds."""

    def __init__(self, name: str, x: torch.Tensor, linear: torch.nn.Linear, scheme: str) -> None:
        from lightx2v_quant.quant.kernels import triton_ops as T
        from lightx2v_quant.quant.kernels.triton_tuning import TUNER
        from lightx2v_quant.quant.linear import QuantLinear

        self.name, self.scheme = name, scheme
        self.layer = layer = QuantLinear.from_linear(linear, scheme)
        layer.prepare()
        fmt = layer.format
        keys_before = set(TUNER.records)
        t0 = time.time()
        y = layer(x)  # tunes (first time) and records the launches to replay
        torch.cuda.synchronize()
        self.first_call_s = time.time() - t0
        rows = min(x.shape[0], 256)
        tensors = {"weight": layer.weight, "weight_scale": layer.weight_scale}
        self.rel_err = _rel(y[:rows], fmt.reference_linear(x[:rows], tensors, layer.bias, torch.float32))
        self.fns = {"ms": lambda: layer(x)}
        if fmt.name == "w8a8-fp8-block128":
            q, s = T.quantize_per_token_group(x)
            self.fns["gemm_ms"] = lambda: T.fp8_block_matmul(
                q, s, layer.weight, layer.weight_scale, layer.bias, x.dtype
            )
            self.fns["quant_ms"] = lambda: T.quantize_per_token_group(x)
        elif fmt.quantizes_activations:
            q, s = T.quantize_per_token(x, fmt.name)
            self.fns["gemm_ms"] = lambda: T.w8a8_matmul(
                q, s, layer.weight, layer.k_w_scale, layer.bias, x.dtype
            )
            self.fns["quant_ms"] = lambda: T.quantize_per_token(x, fmt.name)
        for fn in self.fns.values():  # anything still untuned (the GEMM alone on a new key) tunes now
            fn()
        torch.cuda.synchronize()
        m, k = x.shape
        self.tuning = {
            "|".join(map(str, key)): rec
            for key, rec in TUNER.records.items()
            if _concerns(key, fmt.name, m, k, linear.out_features)
        }
        self.tuned_now = [key for key in TUNER.records if key not in keys_before]
        self.samples: dict[str, list[float]] = {key: [] for key in self.fns}
        self.plans = len(getattr(layer, "k_triton_plans", {}))

    def measure(self, rep_ms: int) -> None:
        for key, fn in self.fns.items():
            self.samples[key].append(_bench(fn, rep_ms))

    def row(self, x: torch.Tensor, bf16: dict, peak_gbs: float | None, loop_iters: int) -> dict:
        (m, k), n = x.shape, self.layer.out_features
        flop = 2.0 * m * n * k
        med = {key: statistics.median(v) for key, v in self.samples.items()}
        full = self.fns["ms"]
        row = dict(
            shape=self.name,
            m=m,
            n=n,
            k=k,
            scheme=self.scheme,
            format=self.layer.format.name,
            bf16_ms=bf16["ms"],
            ms=med["ms"],
            ratio=bf16["ms"] / med["ms"],
            gemm_ms=med.get("gemm_ms"),
            gemm_ratio=bf16["ms"] / med["gemm_ms"] if "gemm_ms" in med else None,
            quant_ms=med.get("quant_ms"),
            tflops=flop / med["ms"] / 1e9,
            gemm_tflops=flop / med["gemm_ms"] / 1e9 if "gemm_ms" in med else None,
            loop_ms=_loop_ms(full, loop_iters),
            cpu_us=_cpu_us(full, loop_iters),
            bf16_loop_ms=bf16["loop_ms"],
            bf16_cpu_us=bf16["cpu_us"],
            rel_err=self.rel_err,
            first_call_s=self.first_call_s,
            tuned_now=["|".join(map(str, key)) for key in self.tuned_now],
            replayed=self.plans > 0,
            samples_ms=self.samples,
            tuning=self.tuning,
        )
        row["loop_ratio"] = row["bf16_loop_ms"] / row["loop_ms"]
        if row["quant_ms"]:
            moved = m * k * (x.element_size() + 1) + 4 * m * (k // 128 if "b128" in self.scheme else 1)
            row["quant_gbs"] = moved / row["quant_ms"] / 1e6
            row["quant_peak_pct"] = 100 * row["quant_gbs"] / peak_gbs if peak_gbs else None
            row["quant_variants_gbs"] = {
                label: moved / ms / 1e6
                for rec in self.tuning.values()
                if rec.get("config", "").startswith("quant")
                for label, ms in rec.get("timings_ms", {}).items()
            }
        routes = [rec for key, rec in self.tuning.items() if key.startswith("w8a8-linear|")]
        if routes:
            row["route"] = routes[0]["config"]
            row["route_timings_ms"] = routes[0].get("timings_ms", {})
        row["config"] = "; ".join(f"{key.split('|')[0]}: {rec['config']}" for key, rec in self.tuning.items())
        return row


def run_shape(
    name: str, schemes: list[str], rep_ms: int, rounds: int, peak_gbs: float | None, loop_iters: int
) -> list[dict]:
    m, n, k = SHAPES[name]
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    linear = torch.nn.Linear(k, n, bias=True, device="cuda", dtype=torch.bfloat16)
    torch.nn.init.normal_(linear.weight, std=k**-0.5)
    w, b = linear.weight.detach(), linear.bias.detach()
    bf16_fn = lambda: F.linear(x, w, b)  # noqa: E731
    cases = [Case(name, x, linear, scheme) for scheme in schemes]
    bf16_samples: list[float] = []
    for _ in range(rounds):  # interleaved: bf16, then each scheme's calls, round after round
        bf16_samples.append(_bench(bf16_fn, rep_ms))
        for case in cases:
            case.measure(rep_ms)
    bf16 = dict(
        ms=statistics.median(bf16_samples),
        loop_ms=_loop_ms(bf16_fn, loop_iters),
        cpu_us=_cpu_us(bf16_fn, loop_iters),
    )
    flop = 2.0 * m * n * k
    print(
        f"\n{name}: M={m} N={n} K={k}  bf16 F.linear {bf16['ms']:.4f} ms "
        f"({flop / bf16['ms'] / 1e9:.0f} TFLOP/s)"
        f", loop {bf16['loop_ms']:.4f} ms, {bf16['cpu_us']:.1f} us CPU per call",
        flush=True,
    )
    rows = []
    for case in cases:
        r = case.row(x, bf16, peak_gbs, loop_iters)
        rows.append(r)
        extra = ""
        if r["gemm_ms"]:
            extra += f" | gemm {r['gemm_ms']:.4f} ms ({r['gemm_ratio']:.2f}x)"
        if r["quant_ms"]:
            pct = f" {r['quant_peak_pct']:.0f}%" if r.get("quant_peak_pct") else ""
            extra += f" | quant {r['quant_ms']:.4f} ms {r['quant_gbs']:.0f} GB/s{pct}"
        if r.get("route"):
            extra += f" | route {r['route']}"
        print(
            f"  {r['scheme']:17s} {r['ms']:.4f} ms {r['ratio']:.2f}x  loop {r['loop_ratio']:.2f}x "
            f"({r['cpu_us']:.0f} us CPU){extra} | err {r['rel_err']:.1e} | "
            f"first call {r['first_call_s']:.1f}s",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON results (a .md table goes next to it)")
    parser.add_argument("--tune-file", type=Path, help="read/write the tuner's choices here")
    parser.add_argument(
        "--shapes",
        nargs="*",
        default=["dit14b-480p", "t5", "clip", "small"],
        help=f"shape names or groups ({', '.join(GROUPS)}, all)",
    )
    parser.add_argument("--schemes", nargs="*", default=SCHEMES, choices=SCHEMES)
    parser.add_argument("--rep-ms", type=int, default=40, help="do_bench time per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds")
    parser.add_argument("--loop-iters", type=int, default=50)
    parser.add_argument("--peak-gbs", type=float, help="memory bandwidth for the quantizer's % of peak")
    args = parser.parse_args(argv)
    if args.tune_file:
        os.environ["LIGHTX2V_QUANT_TRITON_TUNE_FILE"] = str(args.tune_file)
        args.tune_file.parent.mkdir(parents=True, exist_ok=True)
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
    peak = _peak_gbs(args.peak_gbs)
    header = dict(
        device=torch.cuda.get_device_name(),
        capability=list(torch.cuda.get_device_capability()),
        torch=torch.__version__,
        triton=triton.__version__,
        rep_ms=args.rep_ms,
        rounds=args.rounds,
        peak_gbs=peak,
        tune_file=str(args.tune_file) if args.tune_file else None,
        pdl=os.environ.get("LIGHTX2V_QUANT_TRITON_PDL", "1") != "0",
        replay=os.environ.get("LIGHTX2V_QUANT_TRITON_REPLAY", "1") != "0",
    )
    print(json.dumps(header))
    rows: list[dict] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    for name in dict.fromkeys(names):
        rows += run_shape(name, args.schemes, args.rep_ms, args.rounds, peak, args.loop_iters)
        args.out.write_text(json.dumps({**header, "results": rows}, indent=1))
    lines = summarize(rows)
    for line in lines:
        print(line)
    write_markdown(args.out.with_suffix(".md"), header, rows, lines)
    print(f"total {time.time() - t_start:.0f} s; wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
