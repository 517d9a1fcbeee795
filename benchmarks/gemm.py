"""GEMM benchmark (issue 8): every quantized scheme that runs on this GPU against bf16 ``F.linear``.

Shapes are Wan's: the 14B DIT at 480p (M = 32,760 tokens) and 720p (75,600), the 1.3B DIT at 480p, the
umT5-XXL encoder (512 tokens) and the CLIP ViT-H/14 image encoder (257 tokens). Each scheme is timed
through ``QuantLinear.forward`` (activation quantization included) and, where the adapter splits it
(``quantize_input`` / ``gemm``), as the GEMM alone. Peers: ``torch._scaled_mm`` row-wise fp8 (GEMM
alone) and torchao's float8 per-row inference under ``torch.compile``. Median GPU time over many calls
(CUDA events), inputs and weights rotated over enough copies that the 50 MB L2 cannot hold them.
Writes ``gemm_<device>.json`` and ``gemm_<device>.md`` into ``--out``.

    source .gpu/setup.sh && python benchmarks/gemm.py --out benchmarks/results [--quick]
    python benchmarks/gemm.py --out /tmp/r --only clip,t5 --schemes fp8-triton,int8-triton --triton-routes

The `triton` W8A8 rows also record the route (one-launch fused quantize+GEMM or quantizer + GEMM).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root

from bench_utils import Report, Timing, bench, md_table, timing_dict  # noqa: E402

from lightx2v_quant import hardware  # noqa: E402
from lightx2v_quant.quant import formats as qf  # noqa: E402
from lightx2v_quant.quant.kernels import get_kernel  # noqa: E402
from lightx2v_quant.quant.kernels._adapter import Adapter  # noqa: E402
from lightx2v_quant.quant.linear import QuantLinear  # noqa: E402
from lightx2v_quant.quant.schemes import SCHEMES  # noqa: E402

# (group, layer, M tokens, N out_features, K in_features), in the order they run (most important first)
SHAPES = [
    ("wan14b-480p", "qkvo", 32760, 5120, 5120),
    ("wan14b-480p", "ffn-up", 32760, 13824, 5120),
    ("wan14b-480p", "ffn-down", 32760, 5120, 13824),
    ("t5", "ffn-up", 512, 10240, 4096),
    ("t5", "ffn-down", 512, 4096, 10240),
    ("clip", "mlp-up", 257, 5120, 1280),
    ("clip", "mlp-down", 257, 1280, 5120),
    ("clip", "qkv", 257, 3840, 1280),
    ("wan14b-720p", "qkvo", 75600, 5120, 5120),
    ("wan14b-720p", "ffn-up", 75600, 13824, 5120),
    ("wan14b-720p", "ffn-down", 75600, 5120, 13824),
    ("wan1.3b-480p", "qkvo", 32760, 1536, 1536),
    ("wan1.3b-480p", "ffn-up", 32760, 8960, 1536),
    ("wan1.3b-480p", "ffn-down", 32760, 1536, 8960),
]
QUICK = {
    ("wan14b-480p", "qkvo"),
    ("wan14b-480p", "ffn-up"),
    ("wan14b-480p", "ffn-down"),
    ("t5", "ffn-up"),
    ("clip", "mlp-up"),
}
PEER_COMPILED = QUICK  # shapes where the torch.compile'd torchao peer runs (compiling costs ~10 s a shape)
PEER_SCALED_MM = "peer: torch._scaled_mm row-wise fast-accum"
PEER_TORCHAO = "peer: torchao float8 per-row, torch.compile"
COPY_BYTES = 512 << 20  # rotate inputs + bf16 weights over at least this many bytes (L2 is 50 MB)
BF16 = torch.bfloat16


def _label(group: str, layer: str) -> str:
    return f"{group} {layer}"


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref).norm() / ref.norm())


def _row(report: Report, shape, scheme: str, mode: str, t: Timing, base_ms: float, **extra) -> None:
    group, layer, m, n, k = shape
    report.results.append(
        {
            "group": group,
            "layer": layer,
            "M": m,
            "N": n,
            "K": k,
            "scheme": scheme,
            "mode": mode,
            "tflops": round(2 * m * n * k / (t.median_ms * 1e-3) / 1e12, 1),
            "speedup_vs_bf16": round(base_ms / t.median_ms, 3),
            **timing_dict(t),
            **extra,
        }
    )


def _skip(report: Report, shape, scheme: str, reason: str) -> None:
    report.skipped.append({"shape": _label(*shape[:2]), "scheme": scheme, "reason": reason})


def _run_scheme(report, shape, scheme, xs, lins, y_ref, base_ms, target_s) -> None:
    kernel = get_kernel(scheme.kernel)
    layers = [QuantLinear.from_linear(lin, scheme) for lin in lins]
    for layer in layers:
        layer.prepare()
    err = _rel_err(layers[0](xs[0]), y_ref)
    copies, dev = len(xs), xs[0].device.type
    t = bench(lambda i: layers[i](xs[i]), copies, target_s=target_s, device=dev)
    route = _triton_route(scheme, shape) if scheme.kernel == "triton" else {}
    _row(
        report,
        shape,
        scheme.name,
        "forward",
        t,
        base_ms,
        rel_err_vs_bf16=round(err, 5),
        copies=copies,
        **route,
    )
    if isinstance(kernel, Adapter):  # the GEMM alone, on inputs quantized beforehand
        qx = [kernel.quantize_input(layers[i], xs[i]) for i in range(copies)]
        t = bench(
            lambda i: kernel.gemm(layers[i], *qx[i], out_dtype=BF16), copies, target_s=target_s, device=dev
        )
        _row(report, shape, scheme.name, "gemm", t, base_ms, copies=copies)


W8A8_CHANNEL = ("w8a8-fp8-channel", "w8a8-int8-channel")


def _run_triton_routes(report, shape, scheme, xs, lins, y_ref, base_ms, target_s) -> None:
    """The `triton` W8A8 scheme with each route forced (LIGHTX2V_QUANT_TRITON_ROUTE), fresh layers each:
    rows '<scheme> [fused]' (one launch, quantization in the GEMM's prologue) and '<scheme> [split]'."""
    import os

    from lightx2v_quant.quant.kernels.triton_fused import FUSE_MAX_M

    old = os.environ.get("LIGHTX2V_QUANT_TRITON_ROUTE")
    try:
        for mode in ("fused", "split"):
            if mode == "fused" and shape[2] > FUSE_MAX_M:
                _skip(report, shape, f"{scheme.name} [fused]", f"M > {FUSE_MAX_M}: no one-launch route")
                continue
            os.environ["LIGHTX2V_QUANT_TRITON_ROUTE"] = mode
            layers = [QuantLinear.from_linear(lin, scheme) for lin in lins]
            for layer in layers:
                layer.prepare()
            err = _rel_err(layers[0](xs[0]), y_ref)
            t = bench(lambda i, ls=layers: ls[i](xs[i]), len(xs), target_s=target_s, device=xs[0].device.type)
            extra = _triton_route(scheme, shape, mode)
            name = f"{scheme.name} [{mode}]"
            _row(report, shape, name, "forward", t, base_ms, rel_err_vs_bf16=round(err, 5), **extra)
    finally:
        if old is None:
            os.environ.pop("LIGHTX2V_QUANT_TRITON_ROUTE", None)
        else:
            os.environ["LIGHTX2V_QUANT_TRITON_ROUTE"] = old


def _triton_route(scheme, shape, mode: str = "") -> dict:
    """For the `triton` W8A8 schemes: the route the size rule and the tuner picked for this shape (one
    launch with the quantization fused into the GEMM, or quantizer + GEMM) and every route's tuning time."""
    from lightx2v_quant.quant.kernels.triton_tuning import LINEAR, TUNER, m_bucket

    _, _, m, n, k = shape
    for key, rec in TUNER.records.items():
        if key[0] != LINEAR or key[1] != scheme.format or key[4:7] != (m_bucket(m), n, k):
            continue
        if key[7] == mode or (not mode and key[7] != "fused"):  # "split" alone: forced or by the rule
            return {"route": rec["config"], "route_timings_ms": rec.get("timings_ms", {})}
    return {}


def _peer_scaled_mm(report, shape, xs, lins, y_ref, base_ms, target_s) -> None:
    """torch._scaled_mm row-wise with fast accumulation on pre-quantized inputs: fp8's GEMM alone."""
    fmt = qf.FORMATS["w8a8-fp8-channel"]
    qx = [fmt.quantize_activation(x) for x in xs]
    qw = [fmt.quantize_weight(lin.weight) for lin in lins]
    scale_b = [w["weight_scale"].reshape(1, -1).contiguous() for w in qw]

    def call(i: int) -> torch.Tensor:
        return torch._scaled_mm(
            qx[i][0],
            qw[i]["weight"].t(),
            scale_a=qx[i][1],
            scale_b=scale_b[i],
            bias=lins[i].bias,
            out_dtype=BF16,
            use_fast_accum=True,
        )

    err = _rel_err(call(0), y_ref)
    t = bench(call, len(xs), target_s=target_s, device=xs[0].device.type)
    _row(report, shape, PEER_SCALED_MM, "gemm", t, base_ms, rel_err_vs_bf16=round(err, 5))


def _peer_torchao_compiled(report, shape, xs, lins, y_ref, base_ms, target_s) -> None:
    """torchao Float8DynamicActivationFloat8WeightConfig(PerRow()) on nn.Linear copies, torch.compile'd."""
    import copy

    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    mods = []
    for lin in lins:
        seq = torch.nn.Sequential(copy.deepcopy(lin))
        quantize_(seq, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
        mods.append(seq[0])
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    try:
        # One compiled function taking the (tensor-subclass) weight as an input: compiles once for all copies
        linear = torch.compile(lambda x, w, b: F.linear(x, w, b))
        call = lambda i: linear(xs[i], mods[i].weight, mods[i].bias)  # noqa: E731
        err, how = _rel_err(call(0), y_ref), "one compiled F.linear, weights as inputs"
    except Exception as exc:  # fall back to compiling modules (each compiles; rotate over four copies)
        compiled = [torch.compile(mod) for mod in mods[:4]]
        call = lambda i: compiled[i % len(compiled)](xs[i])  # noqa: E731
        err, how = (
            _rel_err(call(0), y_ref),
            f"compiled modules, {len(compiled)} copies ({type(exc).__name__})",
        )
    t = bench(call, len(xs), target_s=target_s, device=xs[0].device.type)
    _row(report, shape, PEER_TORCHAO, "forward", t, base_ms, rel_err_vs_bf16=round(err, 5), how=how)


def run_shape(report, shape, schemes, args, deadline) -> None:
    group, layer, m, n, k = shape
    copies = max(2, min(32, math.ceil(COPY_BYTES / ((m * k + n * k) * 2)))) if args.device == "cuda" else 2
    torch.manual_seed(0)
    xs = [torch.randn(m, k, device=args.device, dtype=BF16) for _ in range(copies)]
    lins = [torch.nn.Linear(k, n, device=args.device, dtype=BF16) for _ in range(copies)]
    with torch.no_grad():
        y_ref = F.linear(xs[0], lins[0].weight, lins[0].bias).float()
        base = bench(
            lambda i: F.linear(xs[i], lins[i].weight, lins[i].bias),
            copies,
            target_s=args.target_s,
            device=args.device,
        )
        _row(report, shape, "bf16 F.linear", "forward", base, base.median_ms, copies=copies)
        print(
            f"[{time.strftime('%X')}] {_label(group, layer)} M={m} N={n} K={k}: bf16 {base.median_ms:.3f} ms",
            flush=True,
        )
        runs = [
            (
                s.name,
                lambda s=s: _run_scheme(report, shape, s, xs, lins, y_ref, base.median_ms, args.target_s),
            )
            for s in schemes
        ]
        if args.triton_routes:
            runs += [
                (
                    f"{s.name} [routes]",
                    lambda s=s: _run_triton_routes(
                        report, shape, s, xs, lins, y_ref, base.median_ms, args.target_s
                    ),
                )
                for s in schemes
                if s.kernel == "triton" and s.format in W8A8_CHANNEL
            ]
        if args.device == "cuda" and hardware.detect().sm >= 89:
            runs.append(
                (
                    PEER_SCALED_MM,
                    lambda: _peer_scaled_mm(report, shape, xs, lins, y_ref, base.median_ms, args.target_s),
                )
            )
            if not args.no_compile and (group, layer) in PEER_COMPILED:
                runs.append(
                    (
                        PEER_TORCHAO,
                        lambda: _peer_torchao_compiled(
                            report, shape, xs, lins, y_ref, base.median_ms, args.target_s
                        ),
                    )
                )
        for name, run in runs:
            scheme = next((s for s in schemes if s.name == name), None)
            if scheme is not None:
                problem = get_kernel(scheme.kernel).shape_problem(scheme.fmt, n, k)
                if problem:
                    _skip(report, shape, name, problem)
                    continue
            if time.perf_counter() > deadline:
                _skip(report, shape, name, f"time budget of {args.budget_s:.0f} s used up")
                continue
            before = len(report.results)
            try:
                run()
                for r in report.results[before:]:
                    speed = f"{r['speedup_vs_bf16']:5.2f}x {r['tflops']:7.1f} TFLOP/s"
                    route = f"  route: {r['route']}" if "route" in r else ""
                    print(f"    {name:44s} {r['mode']:8s} {speed}{route}", flush=True)
            except Exception as exc:  # record and go on: one broken library must not sink the run
                _skip(report, shape, name, f"error: {type(exc).__name__}: {exc}")
                print(f"    {name}: ERROR {exc}\n{traceback.format_exc(limit=3)}", flush=True)
            finally:
                torch.cuda.empty_cache()


# -- markdown --------------------------------------------------------------------------------------
def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def markdown(report: Report, shapes) -> str:
    labels = [_label(g, layer) for g, layer, *_ in shapes]
    out = [
        f"# GEMM benchmark on {report.device} (sm_{report.capability})",
        "",
        f"torch {report.meta['torch']}, CUDA {report.meta['cuda']}, {report.meta['date']}; "
        f"{report.meta['method']}",
        "",
    ]
    for mode, title in (
        ("forward", "QuantLinear.forward, activation quantization included"),
        ("gemm", "GEMM alone"),
    ):
        cells: dict[str, dict[str, str]] = {}
        for r in report.results:
            if r["mode"] == mode or r["scheme"] == "bf16 F.linear":
                cells.setdefault(r["scheme"], {})[_label(r["group"], r["layer"])] = (
                    f"{r['speedup_vs_bf16']:.2f}x ({r['tflops']:.0f})"
                )
        rows = [[s] + [c.get(lbl, "-") for lbl in labels] for s, c in cells.items()]
        out += [
            f"## {title}: speed-up over bf16 F.linear (TFLOP/s)",
            "",
            md_table(["scheme", *labels], rows),
            "",
        ]
    routed = [r for r in report.results if "route" in r]
    if routed:
        rows = [
            [
                _label(r["group"], r["layer"]),
                r["scheme"],
                r["route"],
                ", ".join(f"{c}: {ms * 1e3:.1f} us" for c, ms in r["route_timings_ms"].items()) or "-",
            ]
            for r in routed
        ]
        out += [
            "## Triton W8A8 routes (size rule + tuner; tuning times from triton.testing.do_bench)",
            "",
            md_table(["shape", "scheme", "route", "tuning times"], rows),
            "",
        ]
    dit = [r for r in report.results if r["group"] == "wan14b-480p" and r["mode"] == "forward"]
    by_scheme: dict[str, list[float]] = {}
    for r in dit:
        by_scheme.setdefault(r["scheme"], []).append(r["speedup_vs_bf16"])
    rows = [[s, f"{_geomean(v):.2f}x"] for s, v in by_scheme.items() if len(v) == 3]
    out += [
        "## Geometric mean over the three 14B 480p shapes (forward)",
        "",
        md_table(["scheme", "speed-up"], rows),
        "",
    ]
    rows = [
        [name, "yes" if s["available"] else "no", s["notes"] or s["reason"]]
        for name, s in report.schemes.items()
    ]
    out += ["## Schemes on this machine", "", md_table(["scheme", "runs here", "notes / why not"], rows), ""]
    if report.skipped:
        out += [
            "## Skipped cases",
            "",
            md_table(
                ["shape", "scheme", "reason"],
                [[s["shape"], s["scheme"], s["reason"]] for s in report.skipped],
            ),
            "",
        ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for gemm_<device>.json / .md")
    parser.add_argument(
        "--quick", action="store_true", help="five shapes (14B 480p, T5 up, CLIP up), shorter timing"
    )
    parser.add_argument(
        "--schemes", default="", help="comma-separated scheme names to run (default: all available)"
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated shape groups (clip, t5, wan14b-480p, ...) or group:layer (clip:mlp-up) to run; "
        "all their layers, even with --quick",
    )
    parser.add_argument(
        "--budget-s", type=float, default=300.0, help="stop starting new cases after this many seconds"
    )
    parser.add_argument("--target-s", type=float, default=None, help="timed seconds per measurement")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd torchao peer")
    parser.add_argument(
        "--triton-routes",
        action="store_true",
        help="also time fp8-triton / int8-triton with each W8A8 route forced ('<scheme> [fused]', '[split]')",
    )
    parser.add_argument(
        "--device",
        default="cuda",
        choices=("cuda", "cpu"),
        help="cpu only to smoke-test this script (wall-clock timing, CPU kernels)",
    )
    args = parser.parse_args(argv)
    only = {o for o in args.only.split(",") if o}
    unknown = only - {g for g, *_ in SHAPES} - {f"{g}:{layer}" for g, layer, *_ in SHAPES}
    if unknown:
        groups = sorted({g for g, *_ in SHAPES})
        print(f"--only: unknown {sorted(unknown)}; groups are {groups} (or group:layer)", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "benchmarks/gemm.py needs a CUDA GPU (--device cpu only smoke-tests the script)", file=sys.stderr
        )
        return 2
    args.target_s = args.target_s or (0.1 if args.quick else 0.2)
    start = time.perf_counter()
    deadline = start + args.budget_s
    hw = hardware.detect() if args.device == "cuda" else hardware.HardwareSpec("cpu", "cpu", None, 0.0)
    report = Report(
        hw.name,
        str(hw.sm),
        {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "args": {k: str(v) for k, v in vars(args).items()},
            "method": (
                "bf16 activations with a bias; median "
                + (
                    "GPU time per call from CUDA events"
                    if args.device == "cuda"
                    else "wall-clock time per call (CPU smoke run: not a measurement)"
                )
                + "; inputs and weights rotated over copies totalling >= 512 MB; speed-up = bf16 F.linear "
                "time / scheme time in the same run; TFLOP/s = 2MNK / time"
            ),
        },
    )
    wanted = {s for s in args.schemes.split(",") if s}
    schemes = []
    for s in SCHEMES:
        if wanted and s.name not in wanted:
            continue
        kernel = get_kernel(s.kernel)
        ok, why = kernel.availability(s.format, hw)
        notes = ""
        if ok:
            try:
                notes = kernel.notes(s.format)
            except Exception as exc:
                notes = f"(notes unavailable: {exc})"
            schemes.append(s)
        report.schemes[s.name] = {"available": ok, "reason": why, "notes": notes}
        print(f"{s.name:20s} {'runs' if ok else 'skipped: ' + why}", flush=True)
    if only:
        shapes = [sh for sh in SHAPES if sh[0] in only or f"{sh[0]}:{sh[1]}" in only]
    else:
        shapes = [sh for sh in SHAPES if not args.quick or (sh[0], sh[1]) in QUICK]
    for shape in shapes:
        run_shape(report, shape, schemes, args, deadline)
    report.meta["elapsed_s"] = round(time.perf_counter() - start, 1)
    name = (
        "gemm_" + "-".join(sorted(only)).replace(":", "_") if only else "gemm_quick" if args.quick else "gemm"
    )
    paths = report.write(args.out, name, markdown(report, shapes))
    print(f"wrote {paths[0]} and {paths[1]} in {report.meta['elapsed_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
