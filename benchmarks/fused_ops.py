"""Fused-op microbenchmark: the FFN hidden's GELU(tanh) + per-token quantization in one Triton kernel
(``fused.gelu_quantize``) against the unfused path (``F.gelu``, then the per-token quantizer that
QuantLinear runs), at one 480p FFN chunk of Wan-14B ([8192, 13824] bf16) and Wan-1.3B ([8192, 8960]).

Per case: median GPU time (CUDA events), the kernel's effective bandwidth, the transient memory of one call
(peak allocated above the input), the launch width sweep of the fused kernel, and exactness: the quantized
bytes and scales against the unfused path's, and the GELU alone against ``F.gelu`` on 1M values. Writes
``fused_ops_<device>.json`` and ``.md`` into ``--out``. Under a minute on an H100.

With ``--ops norm`` (default: both) it also times the fused LayerNorm + modulation (+ quantization) at a
480p Wan-14B residual stream, fp32 and bf16 in, bf16 / fp8 / int8 out, against the kernel it replaced
(``benchmarks/fused_norm.py``).

    source .gpu/setup.sh && python benchmarks/fused_ops.py --out benchmarks/results
    TRITON_INTERPRET=1 python benchmarks/fused_ops.py --device cpu --shapes 4x300 --norm-shapes 3x260 \
        --out /tmp/x  # smoke
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root

from bench_utils import Report, bench, md_table, timing_dict
from fused_norm import NORM_SHAPES, run_norm_case

from lightx2v_quant import fused
from lightx2v_quant.fused import gelu as fg
from lightx2v_quant.quant import formats as qf
from lightx2v_quant.quant.activation import PER_TOKEN_FORMATS

SHAPES = {"wan14b-chunk": (8192, 13824), "wan1.3b-chunk": (8192, 8960)}


def _quantize_unfused(y: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-token quantizer QuantLinear runs (Triton on CUDA, the format's reference elsewhere)."""
    if y.is_cuda:
        from lightx2v_quant.quant.kernels.triton_ops import quantize_per_token

        return quantize_per_token(y, fmt)
    return qf.FORMATS[fmt].quantize_activation(y)


def _peak_extra(fn: Callable[[], Any], device: str) -> int | None:
    """Bytes allocated at the peak of one call above what was allocated before it (CUDA only)."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return int(peak)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.dtype == qf.FP8_DTYPE else t


def run_case(name: str, m: int, k: int, quant: str, device: str, target_s: float) -> dict[str, Any]:
    fmt = PER_TOKEN_FORMATS[quant]
    g = torch.Generator(device).manual_seed(0)
    copies = 2 if device == "cuda" else 1  # 2 x 226 MB: far more than the L2
    hs = [torch.randn(m, k, generator=g, device=device, dtype=torch.bfloat16) * 2 for _ in range(copies)]

    def unfused(i: int):
        return _quantize_unfused(F.gelu(hs[i], approximate="tanh"), fmt)

    def fused_call(i: int):
        return fused.gelu_quantize(hs[i], quant)

    res: dict[str, Any] = {"case": name, "m": m, "k": k, "quant": quant}
    out, ref = fused_call(0), unfused(0)
    res["bytes_equal"] = bool(torch.equal(_bits(out.data), _bits(ref[0])) and torch.equal(out.scale, ref[1]))
    res["byte_mismatch"] = float((_bits(out.data) != _bits(ref[0])).double().mean())
    del out, ref
    res["unfused"] = timing_dict(bench(unfused, copies, target_s=target_s, device=device))
    res["gelu_alone"] = timing_dict(
        bench(lambda i: F.gelu(hs[i], approximate="tanh"), copies, target_s=target_s, device=device)
    )
    res["fused"] = timing_dict(bench(fused_call, copies, target_s=target_s, device=device))
    if device == "cuda":  # the approximate-tanh variant: its bytes against the exact path's, and its time
        fast = fused.gelu_quantize(hs[0], quant, fast=True)
        exact = fused_call(0)
        res["fast_byte_mismatch"] = float((_bits(fast.data) != _bits(exact.data)).double().mean())
        res["fast_scale_max_rel"] = float(((fast.scale - exact.scale).abs() / exact.scale).max())
        del fast, exact
        res["fused_fast"] = timing_dict(
            bench(lambda i: fused.gelu_quantize(hs[i], quant, fast=True), copies, target_s=target_s, device=device)
        )
    # read 2 bytes, write 1 (+ 4 per row): the fused kernel's traffic; unfused moves 2 + 2 + 2 + 1
    res["fused_gbps"] = round((3 * m * k + 4 * m) / (res["fused"]["median_ms"] * 1e6), 1)
    res["unfused_gbps_equiv"] = round((3 * m * k + 4 * m) / (res["unfused"]["median_ms"] * 1e6), 1)
    res["speedup"] = round(res["unfused"]["median_ms"] / res["fused"]["median_ms"], 3)
    res["peak_extra_bytes"] = {
        "unfused": _peak_extra(lambda: unfused(0), device),
        "fused": _peak_extra(lambda: fused_call(0), device),
    }
    sweep = {}
    for warps in (4, 8, 16):
        q, s = fg._empty_outputs(hs[0], quant)

        def launch(i: int, w: int = warps, q: torch.Tensor = q, s: torch.Tensor = s):
            fg.launch(hs[i], q, s, quant, num_warps=w)

        sweep[str(warps)] = timing_dict(bench(launch, copies, target_s=target_s, device=device))["median_ms"]
    res["fused_ms_by_warps"] = sweep
    return res


def gelu_exactness(device: str, n: int = 1 << 20) -> dict[str, float]:
    out = {}
    for dtype in (torch.bfloat16, torch.float16):
        h = (torch.randn(n, generator=torch.Generator().manual_seed(1)) * 3).to(dtype).to(device)
        y, ref = fg.gelu_values(h).float(), F.gelu(h, approximate="tanh").float()
        out[str(dtype).replace("torch.", "")] = float((y != ref).double().mean())
    return out


def markdown(report: Report) -> str:
    rows = []
    for r in report.results:
        if "d" in r:  # a norm case: its own table
            continue
        rows.append(
            [
                r["case"],
                f"{r['m']}x{r['k']}",
                r["quant"],
                f"{r['unfused']['median_ms']:.3f}",
                f"{r['gelu_alone']['median_ms']:.3f}",
                f"{r['fused']['median_ms']:.3f}",
                f"{r['fused_fast']['median_ms']:.3f}" if "fused_fast" in r else "-",
                f"{r['fast_byte_mismatch']:.2e}" if "fused_fast" in r else "-",
                f"{r['speedup']:.2f}x",
                f"{r['fused_gbps']}",
                " / ".join(f"{w}w {ms:.3f}" for w, ms in r["fused_ms_by_warps"].items()),
                str(r["peak_extra_bytes"]["unfused"]),
                str(r["peak_extra_bytes"]["fused"]),
                str(r["bytes_equal"]),
            ]
        )
    header = [
        "case",
        "shape",
        "quant",
        "unfused ms",
        "(gelu alone)",
        "fused ms",
        "fused fast-tanh ms",
        "fast-tanh codes moved",
        "speedup",
        "fused GB/s",
        "fused by warps (ms)",
        "unfused peak B",
        "fused peak B",
        "same bytes",
    ]
    text = f"# GELU(tanh) + per-token quantization, fused vs unfused: {report.device}\n\n"
    if rows:
        text += md_table(header, rows)
        text += f"\n\nGELU vs F.gelu, share of random values (1M on CUDA) that differ: {report.meta['gelu_mismatch']}\n"
    return text + norm_markdown(report)


def norm_markdown(report: Report) -> str:
    rows = [
        [
            r["case"],
            f"{r['m']}x{r['d']}",
            r["x"],
            r["out"],
            f"{r['old']['median_ms']:.3f}",
            f"{r['old_gbps']}",
            f"{r['new']['median_ms']:.3f}",
            f"{r['new_gbps']}",
            f"{r['speedup']:.2f}x",
            " / ".join(f"{w}w {ms:.3f}" for w, ms in r["new_ms_by_warps"].items())
            + f" (default {r['default_warps']}w)",
            f"{r['old_new_byte_mismatch']:.2e}",
            str(r.get("new_equals_quantizer", "-")),
        ]
        for r in report.results
        if "d" in r
    ]
    if not rows:
        return ""
    header = ["case", "shape", "x", "out", "old ms", "old GB/s", "new ms", "new GB/s", "speedup",
              "new by warps (ms)", "bytes old != new", "q == quantizer(h)"]  # fmt: skip
    return (
        "\n# LayerNorm + modulation (+ quantization), new vs old kernel\n\n" + md_table(header, rows) + "\n"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="directory for the JSON + markdown")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a smoke run (interpreter)")
    p.add_argument("--shapes", nargs="*", default=None, help="MxK shapes instead of the Wan chunks")
    p.add_argument("--target-s", type=float, default=1.0, help="seconds of timed calls per measurement")
    p.add_argument("--ops", nargs="*", default=["gelu", "norm"], choices=["gelu", "norm"])
    p.add_argument("--norm-shapes", nargs="*", default=None, help="TOKENSxDIM shapes for the norm cases")
    args = p.parse_args()
    shapes = SHAPES if not args.shapes else {s: tuple(int(v) for v in s.split("x")) for s in args.shapes}
    norm_shapes = (
        NORM_SHAPES
        if not args.norm_shapes
        else {s: tuple(int(v) for v in s.split("x")) for s in args.norm_shapes}
    )
    if args.device == "cuda":
        dev, cap = torch.cuda.get_device_name(), "sm_{}{}".format(*torch.cuda.get_device_capability())
    else:
        dev, cap = "cpu", "none"
    meta = {
        "torch": torch.__version__,
        "gelu_mismatch": gelu_exactness(args.device, 1 << (20 if args.device == "cuda" else 12)),
    }
    report = Report(dev, cap, meta)
    for name, (m, k) in shapes.items() if "gelu" in args.ops else ():
        for quant in ("fp8", "int8"):
            report.results.append(run_case(name, m, k, quant, args.device, args.target_s))
            print(report.results[-1], flush=True)
    for name, (m, d) in norm_shapes.items() if "norm" in args.ops else ():
        for x_dtype in (torch.float32, torch.bfloat16):
            for quant in (None, "fp8", "int8"):
                report.results.append(run_norm_case(name, m, d, x_dtype, quant, args.device, args.target_s))
                print(report.results[-1], flush=True)
    paths = report.write(args.out, "fused_ops", markdown(report))
    print("wrote", *paths)


if __name__ == "__main__":
    main()
