"""Shapes, targets and the summary of ``triton_tune.py`` (no GPU needed here).

Targets and anchors are issue 8's, measured on an H100: ratios to bf16 ``F.linear`` in the same run,
activation quantization included, geometric mean over the three 14B 480p shapes.
"""

from __future__ import annotations

import math
from pathlib import Path

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
# issue 8 (H100): vLLM cutlass incl. quantization, per 14B 480p shape (qkvo, ffn-up, ffn-down)
ANCHORS = {"fp8-triton": (1.44, 1.61, 1.35), "int8-triton": (1.45, 1.65, 1.24)}
TARGETS = {  # (group or shape, scheme) -> minimum ratio (geomean for groups)
    ("dit14b-480p", "fp8-triton"): 1.65,
    ("dit14b-480p", "int8-triton"): 1.5,
    ("dit14b-480p", "int4-g128-triton"): 0.8,
    ("t5-ffn-up", "fp8-triton"): 1.4,
    ("t5-ffn-up", "int8-triton"): 1.4,
    ("t5-ffn-up", "int4-g128-triton"): 1.3,
    ("clip-fc1", "fp8-triton"): 0.95,
    ("clip-fc1", "int8-triton"): 0.95,
}


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _fmt(v, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| shape | scheme | ms | x bf16 | loop x | CPU us | GEMM x | quant GB/s (% peak) | route | err |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        quant = "-"
        if r.get("quant_gbs"):
            quant = f"{r['quant_gbs']:.0f} ({_fmt(r.get('quant_peak_pct'), '.0f')}%)"
        lines.append(
            f"| {r['shape']} | {r['scheme']} | {r['ms']:.4f} | {r['ratio']:.2f} | {r['loop_ratio']:.2f} | "
            f"{r['cpu_us']:.0f} | {_fmt(r['gemm_ratio'])} | {quant} | {r.get('route', '-')} | "
            f"{r['rel_err']:.1e} |"
        )
    return lines


def summarize(rows: list[dict]) -> list[str]:
    """Per-shape table, geomeans per group, and each target and anchor with PASS / MISS."""
    lines = ["", *table(rows), ""]
    by = {(r["shape"], r["scheme"]): r for r in rows}
    schemes = list(dict.fromkeys(r["scheme"] for r in rows))
    for group, names in GROUPS.items():
        for scheme in schemes:
            sel = [by[(n, scheme)] for n in names if (n, scheme) in by]
            if len(sel) != len(names):
                continue
            full = _geomean([r["ratio"] for r in sel])
            loop = _geomean([r["loop_ratio"] for r in sel])
            gemm = _geomean([r["gemm_ratio"] for r in sel]) if all(r["gemm_ratio"] for r in sel) else None
            target = TARGETS.get((group, scheme))
            verdict = "" if target is None else f"  target {target}: {'PASS' if full >= target else 'MISS'}"
            lines.append(
                f"geomean {group} {scheme}: {full:.3f}x (loop {loop:.3f}x, "
                f"GEMM alone {_fmt(gemm, '.3f')}x){verdict}"
            )
            if group == "dit14b-480p" and scheme in ANCHORS:
                anchors = ANCHORS[scheme]
                beats = [r["ratio"] > a for r, a in zip(sel, anchors)]
                pairs = ", ".join(
                    f"{r['ratio']:.2f} {'>' if b else '<='} {a}" for r, a, b in zip(sel, anchors, beats)
                )
                verdict = "AHEAD on every shape" if all(beats) else "BEHIND somewhere"
                lines.append(f"  vs vLLM anchors {anchors}: {pairs} -> {verdict}")
    for (shape, scheme), target in TARGETS.items():
        if (shape, scheme) in by:
            r = by[(shape, scheme)]
            full = "PASS" if r["ratio"] >= target else "MISS"
            loop = "PASS" if r["loop_ratio"] >= target else "MISS"
            lines.append(
                f"{shape} {scheme}: {r['ratio']:.2f}x (loop {r['loop_ratio']:.2f}x) target {target}: "
                f"{full} (loop {loop})"
            )
    return lines


def write_markdown(path: Path, header: dict, rows: list[dict], summary: list[str]) -> None:
    meta = ", ".join(f"{k}: {v}" for k, v in header.items())
    body = [line if not line or line.startswith("|") else f"- {line.strip()}" for line in summary]
    path.write_text(f"# Triton kernels vs bf16 F.linear\n\n{meta}\n" + "\n".join(body) + "\n")
