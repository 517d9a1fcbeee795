"""Convert an original DIT / T5 / CLIP checkpoint into a quantized one, one tensor at a time.

The plan (every output tensor's key, shape and dtype) is made from the source's headers first, so bad
input fails before anything is written; then each source tensor is read, LoRA-merged, quantized or
cast, and written into place. Outputs are written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from lightx2v_quant.checkpoints.discovery import ambiguous_dit_error, list_dit_checkpoints
from lightx2v_quant.checkpoints.inspect import inspect_checkpoint
from lightx2v_quant.checkpoints.layout import (
    DIT_DEFAULT_STEM,
    ComponentRules,
    dit_file_name,
    encoder_file_name,
    rules,
)
from lightx2v_quant.checkpoints.lora import LoraMerger, LoraSpec, load_loras
from lightx2v_quant.checkpoints.numerics import checkpoint_tensors
from lightx2v_quant.checkpoints.reader import (
    BLOCK_FILE,
    NON_BLOCK_FILE,
    CheckpointError,
    TensorSource,
    open_checkpoint,
)
from lightx2v_quant.checkpoints.writer import (
    INDEX_NAME,
    SafetensorsWriter,
    TensorPlan,
    block_file_name,
    move_into,
    safetensors_to_pth,
    temporary_folder,
    write_index,
)
from lightx2v_quant.models.wan.keymap import diffusers_to_official, looks_like_diffusers
from lightx2v_quant.quant.formats import Format

LAYOUTS = ("single", "blocks", "pth")
SHOW = 10


@dataclass
class ConvertOptions:
    model_type: str  # dit | t5 | clip
    fmt: Format | None  # None: no quantization (key mapping / dtype cast only)
    layout: str | None = None  # single | blocks | pth; None: single for the DIT, pth for encoders
    non_linear_dtype: torch.dtype | None = None  # dtype of every tensor that is not quantized; None: keep
    source_format: str = "auto"  # auto | official | diffusers (DIT key names of the source)
    loras: list[LoraSpec] = field(default_factory=list)
    device: str = "cpu"  # where the quantization math runs (same bytes on any device)
    overwrite: bool = False
    progress: bool = True

    def resolved_layout(self) -> str:
        layout = self.layout or ("single" if self.model_type == "dit" else "pth")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        return layout


@dataclass
class ConvertReport:
    outputs: list[Path]
    tensors: int = 0
    quantized_layers: int = 0
    bytes_written: int = 0
    seconds: float = 0.0


@dataclass
class _Item:
    src_key: str
    key: str  # output key (official names)
    quantize: bool
    shape: tuple[int, ...]
    src_dtype: torch.dtype
    out_dtype: torch.dtype  # cast target (non-quantized tensors)


def resolve_source(source: Path, model_type: str) -> tuple[TensorSource, str]:
    """Open the original checkpoint to convert (a file, an index, or a folder holding exactly one)."""
    if not source.exists():
        raise CheckpointError(f"source {source} does not exist")
    if source.is_file() or source.name.endswith(".index.json"):
        return open_checkpoint(source), _stem(source)
    if model_type == "dit":
        folder = source
        found = list_dit_checkpoints(folder)
        if not found and (source / "transformer").is_dir():  # a diffusers pipeline folder
            folder = source / "transformer"
            found = list_dit_checkpoints(folder)
        if len(found) > 1:
            raise ambiguous_dit_error(folder, found)
        if not found:
            raise CheckpointError(
                f"no DIT checkpoint (*.safetensors, an index, or per-block files) in {source}"
            )
        paths = found[0]
        src = open_checkpoint(list(paths) if len(paths) > 1 else paths[0])
        return src, _stem(paths[0])
    for ext in (".pth", ".safetensors"):
        p = source / encoder_file_name(model_type, None, ext)
        if p.is_file():
            return open_checkpoint(p), _stem(p)
    raise CheckpointError(
        f"no original {model_type} file ({encoder_file_name(model_type, None)}) in {source}; "
        "give the file itself"
    )


def _stem(p: Path) -> str:
    name = p.name
    for suffix in (".safetensors.index.json", ".safetensors", ".pth", ".pt"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return DIT_DEFAULT_STEM if (p / NON_BLOCK_FILE).exists() else name


def default_output(source: Path, stem: str, opts: ConvertOptions) -> Path:
    """``<source folder>/<format short>/<LightX2V's name>`` (a folder for the per-block layout)."""
    base = source.parent if source.is_file() else source
    folder = base / (opts.fmt.short if opts.fmt else "original")
    return folder if opts.resolved_layout() == "blocks" else folder / output_name(stem, opts)


def output_name(stem: str, opts: ConvertOptions) -> str:
    layout = opts.resolved_layout()
    if opts.model_type == "dit":
        name = dit_file_name(stem, opts.fmt)
        return name[: -len(".safetensors")] + ".pth" if layout == "pth" else name
    return encoder_file_name(opts.model_type, opts.fmt, ".pth" if layout == "pth" else ".safetensors")


_UNKNOWN = "<unknown>"


def _from_diffusers(key: str) -> str | None:
    """Official name of a diffusers DIT key; None for keys diffusers itself ignores; _UNKNOWN otherwise."""
    try:
        return diffusers_to_official(key)
    except KeyError:
        return _UNKNOWN


def _key_map(source: TensorSource, opts: ConvertOptions) -> Callable[[str], str | None] | None:
    if opts.model_type != "dit" or opts.source_format == "official":
        return None
    if opts.source_format == "diffusers" or looks_like_diffusers(source.keys()):
        return _from_diffusers
    return None


def plan(source: TensorSource, opts: ConvertOptions) -> list[_Item]:
    """Every output tensor, from headers only. Raises on anything that would fail half-way."""
    r: ComponentRules = rules(opts.model_type)
    kmap = _key_map(source, opts)
    items, unmapped, seen = [], [], {}
    for src_key in source.keys():
        key = kmap(src_key) if kmap else src_key
        if key == _UNKNOWN:
            unmapped.append(src_key)
            continue
        if key is None:  # a diffusers key without an official counterpart that diffusers ignores too
            continue
        if r.dropped(key):
            continue
        if key in seen:
            raise CheckpointError(f"{src_key} and {seen[key]} both map to {key}")
        seen[key] = src_key
        shape, dtype = source.meta(src_key)
        quantize = opts.fmt is not None and r.is_target(key, len(shape))
        out_dtype = opts.non_linear_dtype if (opts.non_linear_dtype and dtype.is_floating_point) else dtype
        items.append(_Item(src_key, key, quantize, shape, dtype, out_dtype))
    if unmapped:
        raise CheckpointError(
            f"{len(unmapped)} diffusers key(s) have no official Wan name: "
            + ", ".join(unmapped[:SHOW])
            + "; is this a Wan DIT? (--source-format official to skip mapping)"
        )
    info = inspect_checkpoint(source)
    if info.quantized or any(k.endswith(".weight_scale") for k in source.keys()):
        raise CheckpointError(
            f"source {source.describe()} is already quantized ({info.format or 'it has weight_scale'}"
            "); convert from the original checkpoint"
        )
    if opts.fmt is not None:
        bad = [
            f"{i.key} {list(i.shape)}: {p}"
            for i in items
            if i.quantize
            for p in [opts.fmt.shape_problem(*i.shape)]
            if p
        ]
        floats = [
            i.key
            for i in items
            if i.quantize and (not i.src_dtype.is_floating_point or i.src_dtype.itemsize == 1)
        ]
        if bad:
            raise CheckpointError(f"{len(bad)} layer(s) cannot use {opts.fmt.name}: " + "; ".join(bad[:SHOW]))
        if floats:
            raise CheckpointError(f"layers to quantize are not float tensors: {', '.join(floats[:SHOW])}")
        if not any(i.quantize for i in items):
            raise CheckpointError(
                f"no tensor of {source.describe()} is a {opts.model_type} layer to quantize "
                f"(key index {r.key_idx} in {sorted(r.targets)}): wrong --model-type?"
            )
    return items


def _outputs_of(item: _Item, fmt: Format | None) -> list[TensorPlan]:
    if not item.quantize:
        return [TensorPlan(item.key, item.shape, item.out_dtype)]
    n, k = item.shape
    specs = fmt.tensor_specs(n, k)
    scale_dtype = (
        item.src_dtype
        if fmt.name in ("w8a8-fp8-channel", "w8a8-int8-channel")
        else specs["weight_scale"].dtype
    )
    prefix = item.key[: -len(".weight")] if item.key.endswith(".weight") else item.key
    return [
        TensorPlan(item.key, specs["weight"].shape, specs["weight"].dtype),
        TensorPlan(f"{prefix}.weight_scale", specs["weight_scale"].shape, scale_dtype),
    ]


def convert(source_path: str | Path, output: str | Path | None, opts: ConvertOptions) -> ConvertReport:
    """Convert ``source_path`` into ``output`` (a file, or a folder for the per-block layout)."""
    started = time.time()
    source_path = Path(source_path)
    layout = opts.resolved_layout()
    source, stem = resolve_source(source_path, opts.model_type)
    items = plan(source, opts)
    r = rules(opts.model_type)
    merger: LoraMerger | None = None
    if opts.loras:  # DIT LoRAs may use diffusers names whatever the source's naming
        lora_map = _from_diffusers if opts.model_type == "dit" else None
        merger = load_loras(opts.loras, [i.key for i in items], lora_map)

    out = Path(output) if output is not None else default_output(source_path, stem, opts)
    if layout != "blocks" and (out.is_dir() or not out.suffix):
        out = out / output_name(stem, opts)
    out_dir = out if layout == "blocks" else out.parent
    file_of: dict[str, str] = {}  # output key -> file name
    plans: dict[str, list[TensorPlan]] = {}
    for item in items:
        name = out.name if layout != "blocks" else block_file_name(r.block_of(item.key))
        if layout == "pth":
            name += ".tmp.safetensors"
        for p in _outputs_of(item, opts.fmt):
            plans.setdefault(name, []).append(p)
            file_of[p.key] = name
    final_names = list(plans) if layout != "pth" else [out.name]
    if layout == "blocks":
        final_names.append(INDEX_NAME)
    clash = [out_dir / n for n in final_names if (out_dir / n).exists()]
    if clash and not opts.overwrite:
        raise FileExistsError(f"{', '.join(map(str, clash[:4]))} exist(s); pass --overwrite to replace")

    report = ConvertReport(outputs=[])
    with temporary_folder(out_dir) as tmp:
        writers = {name: SafetensorsWriter(tmp / name, p) for name, p in plans.items()}
        try:
            bar = tqdm(
                items,
                desc=f"{opts.model_type} -> {opts.fmt.short if opts.fmt else 'cast'}",
                unit="tensor",
                disable=not opts.progress,
            )
            for item in bar:
                t = source.get(item.src_key)
                if merger is not None:
                    t = merger.apply(item.key, t)
                if item.quantize:
                    tensors = checkpoint_tensors(opts.fmt, t.to(opts.device))
                    outs = _outputs_of(item, opts.fmt)
                    writers[file_of[outs[0].key]].write(outs[0].key, tensors["weight"].cpu())
                    writers[file_of[outs[1].key]].write(outs[1].key, tensors["weight_scale"].cpu())
                    report.quantized_layers += 1
                else:
                    writers[file_of[item.key]].write(item.key, t.to(item.out_dtype))
                del t
            for w in writers.values():
                w.close()
        except BaseException:
            for w in writers.values():
                w.abort()
            raise
        files = [tmp / n for n in plans]
        if layout == "pth":
            # LightX2V's .pth order: the source keys, then the scales appended.
            order = [i.key for i in items] + [
                p.key for i in items if i.quantize for p in _outputs_of(i, opts.fmt)[1:]
            ]
            safetensors_to_pth(files[0], tmp / out.name, order)
            files[0].unlink()
            files = [tmp / out.name]
        stale: list[Path] = []
        if layout == "blocks":
            write_index(tmp / INDEX_NAME, file_of, sum(p.nbytes for ps in plans.values() for p in ps))
            files.append(tmp / INDEX_NAME)
            keep = {f.name for f in files}
            stale = [
                p
                for p in out_dir.glob("block_*.safetensors")
                if BLOCK_FILE.fullmatch(p.name) and p.name not in keep
            ]
        for f in files:
            if not f.name.endswith(".json"):
                open_checkpoint(f)  # re-read the written header: the file is complete and readable
        move_into(files, out_dir, opts.overwrite, stale)
    report.outputs = [out_dir / f.name for f in files]
    report.tensors = len(file_of)
    report.bytes_written = sum(os.path.getsize(p) for p in report.outputs)
    report.seconds = time.time() - started
    return report
