"""``lightx2v-quant-convert``: quantize an original Wan DIT / T5 / CLIP checkpoint into LightX2V's files.

Examples::

    lightx2v-quant-convert /models/Wan2.1-T2V-14B --model-type dit --format fp8
    lightx2v-quant-convert /models/Wan2.1-T2V-14B --model-type dit --scheme int8-vllm --layout blocks
    lightx2v-quant-convert /models/Wan2.1-T2V-14B/models_t5_umt5-xxl-enc-bf16.pth --model-type t5 --format fp8
    lightx2v-quant-convert diffusers/transformer --model-type dit --format fp8 --lora distill.safetensors

Also ``python -m lightx2v_quant.checkpoints.convert``. See docs/checkpoints.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from lightx2v_quant.checkpoints.conversion import LAYOUTS, ConvertOptions, convert
from lightx2v_quant.checkpoints.layout import COMPONENTS, format_by_name
from lightx2v_quant.checkpoints.lora import LoraSpec
from lightx2v_quant.checkpoints.reader import CheckpointError
from lightx2v_quant.quant.formats import FORMATS
from lightx2v_quant.quant.schemes import UnknownScheme, get_scheme

DTYPES = {
    "keep": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
    "torch.bfloat16": torch.bfloat16,
    "torch.float16": torch.float16,
    "torch.float32": torch.float32,
}


def build_parser() -> argparse.ArgumentParser:
    fmts = ", ".join(f"{f.short} ({f.name})" for f in FORMATS.values())
    p = argparse.ArgumentParser(
        prog="lightx2v-quant-convert",
        description="Quantize an original Wan DIT / umT5 / CLIP checkpoint into a LightX2V-compatible file.",
        epilog="Outputs go to <source folder>/<format>/ under LightX2V's names unless -o is given; "
        "nothing is overwritten without --overwrite.",
    )
    p.add_argument(
        "source",
        type=Path,
        help="original checkpoint: a file (.safetensors/.pth), an index .json, "
        "or a folder holding one (a diffusers pipeline folder works for the DIT)",
    )
    p.add_argument("-t", "--model-type", choices=COMPONENTS, required=True)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("-f", "--format", help=f"target format: {fmts}, or 'none' (rename/cast only)")
    which.add_argument("--scheme", help="a scheme name (e.g. fp8-sgl, int8-vllm): its format is used")
    p.add_argument(
        "-o", "--output", type=Path, help="output file, or folder (the per-block layout writes a folder)"
    )
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        help="single safetensors file (DIT default), per-block files + "
        "index (blocks), or a torch.save .pth (T5/CLIP default)",
    )
    p.add_argument(
        "--non-linear-dtype",
        choices=sorted(DTYPES),
        default="keep",
        help="dtype of every tensor that is not quantized (default: keep the source's; "
        "LightX2V's converter defaults to fp32, its examples use bf16 for DIT/T5 and fp16 for CLIP)",
    )
    p.add_argument(
        "--source-format",
        choices=("auto", "official", "diffusers"),
        default="auto",
        help="DIT key names of the source; diffusers names are mapped to the official ones",
    )
    p.add_argument(
        "--lora",
        type=Path,
        action="append",
        default=[],
        help="merge this LoRA before quantizing (repeatable)",
    )
    p.add_argument(
        "--lora-strength",
        type=float,
        action="append",
        default=[],
        help="one per --lora, or one for all (default 1.0)",
    )
    p.add_argument(
        "--lora-alpha",
        type=float,
        action="append",
        default=[],
        help="override the LoRA's alpha (one per --lora, or one for all); factor = alpha / rank",
    )
    p.add_argument("--device", default="cpu", help="where the quantization math runs, e.g. cuda (same bytes)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _per_lora(values: list[float], n: int, name: str, default: float | None) -> list[float | None]:
    if not values:
        return [default] * n
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise ValueError(f"give one {name} per --lora ({n}) or a single one, got {len(values)}")
    return values


def options_from_args(args: argparse.Namespace) -> ConvertOptions:
    if args.scheme:
        try:
            fmt = get_scheme(args.scheme).fmt
        except UnknownScheme as exc:
            raise ValueError(str(exc)) from None
    else:
        fmt = None if args.format == "none" else format_by_name(args.format)
    strengths = _per_lora(args.lora_strength, len(args.lora), "--lora-strength", 1.0)
    alphas = _per_lora(args.lora_alpha, len(args.lora), "--lora-alpha", None)
    loras = [LoraSpec(p, s, a) for p, s, a in zip(args.lora, strengths, alphas)]
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available here; use --device cpu")
    return ConvertOptions(
        model_type=args.model_type,
        fmt=fmt,
        layout=args.layout,
        non_linear_dtype=DTYPES[args.non_linear_dtype],
        source_format=args.source_format,
        loras=loras,
        device=args.device,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        opts = options_from_args(args)
        report = convert(args.source, args.output, opts)
    except (CheckpointError, FileExistsError, ValueError) as exc:
        print(f"lightx2v-quant-convert: error: {exc}", file=sys.stderr)
        return 2
    size = report.bytes_written / 2**30
    print(
        f"wrote {', '.join(map(str, report.outputs))}: {report.tensors} tensors, "
        f"{report.quantized_layers} quantized layers, {size:.3f} GiB in {report.seconds:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
