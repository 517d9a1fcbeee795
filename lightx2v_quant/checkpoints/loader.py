"""Fill a model built on the ``meta`` device from a checkpoint, one tensor at a time.

Strict: every tensor the model expects must be in the file and every tensor in the file must be
expected (after the caller's key map and ignore rule); shapes must match. Float tensors are cast to the
dtype the model was built with. ``QuantLinear`` layers take either pre-quantized tensors (``.weight`` +
``.weight_scale``, LightX2V's layout) or a high-precision ``.weight`` that is quantized while loading
(online quantization), so the full-precision model never exists in memory at once.

Online quantization uses ``numerics.checkpoint_quantizer`` by default: the converter's own numerics
(LightX2V's for fp8/int8), so loading an original equals converting it and loading the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from lightx2v_quant.checkpoints.inspect import layer_format
from lightx2v_quant.checkpoints.numerics import checkpoint_quantizer
from lightx2v_quant.checkpoints.reader import CheckpointError, TensorSource
from lightx2v_quant.quant.linear import QuantLinear

Quantizer = Callable[[QuantLinear, torch.Tensor], dict[str, torch.Tensor]]
SHOW = 12  # keys listed per error


@dataclass
class LoadReport:
    source: str
    tensors: int = 0
    bytes: int = 0
    prequantized: list[str] = field(default_factory=list)  # QuantLinear layers read quantized
    quantized_online: list[str] = field(default_factory=list)  # QuantLinear layers quantized while loading


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOW])
    return shown + (f" ... ({len(keys) - SHOW} more)" if len(keys) > SHOW else "")


def _assign(model: nn.Module, key: str, value: torch.Tensor) -> None:
    prefix, _, name = key.rpartition(".")
    module = model.get_submodule(prefix) if prefix else model
    if name in module._parameters:
        module._parameters[name] = nn.Parameter(value, requires_grad=False)
    elif name in module._buffers:
        module._buffers[name] = value
    else:
        raise KeyError(key)


def load_into(
    model: nn.Module,
    source: TensorSource,
    *,
    device: torch.device | str = "cpu",
    key_map: Callable[[str], str | None] | None = None,
    quantizer: Quantizer = checkpoint_quantizer,
    what: str = "model",
    progress: bool = False,
    scale_dtype: torch.dtype | None = None,
) -> LoadReport:
    """Load ``source`` into ``model`` (usually built on meta). ``key_map`` maps file keys to model keys
    (None drops a key). Raises CheckpointError listing missing / unexpected / mismatched tensors.

    ``scale_dtype`` rounds every weight scale through that dtype (``torch.bfloat16`` reproduces
    LightX2V's DIT loader, which casts a file's float tensors to bf16); None keeps them exact."""
    expected = {k: (tuple(t.shape), t.dtype) for k, t in model.state_dict(keep_vars=True).items()}
    qlayers = {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    file_of: dict[str, str] = {}
    for fkey in source.keys():
        mkey = key_map(fkey) if key_map else fkey
        if mkey is not None:
            file_of[mkey] = fkey

    online = {p for p in qlayers if f"{p}.weight_scale" not in file_of and f"{p}.weight" in file_of}
    provided = set(file_of) | {f"{p}.weight_scale" for p in online}
    missing = sorted(k for k in expected if k not in provided)
    unexpected = sorted(k for k in file_of if k not in expected)
    if missing or unexpected:
        raise CheckpointError(_key_error(what, source, missing, unexpected))

    report = LoadReport(source=source.describe())
    _check_shapes(model, source, file_of, expected, qlayers, online, what)
    done_quant: set[str] = set()
    keys = list(expected)
    for key in tqdm(keys, desc=f"loading {what}", disable=not progress, unit="tensor"):
        prefix, _, name = key.rpartition(".")
        layer = qlayers.get(prefix)
        if layer is not None:
            if prefix not in done_quant:
                _load_quant_layer(layer, prefix, source, file_of, prefix in online, device, quantizer, report,
                                  scale_dtype)
                done_quant.add(prefix)
            continue
        t = source.get(file_of[key])
        want_dtype = expected[key][1]
        if t.is_floating_point() and want_dtype.is_floating_point:
            t = t.to(device=device, dtype=want_dtype)
        else:
            t = t.to(device)
        _assign(model, key, t)
        report.tensors += 1
        report.bytes += t.numel() * t.element_size()
    materialize = getattr(model, "materialize_buffers", None)
    if callable(materialize):
        materialize(device)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"{what}: tensors left unloaded after reading {source.describe()}: {_listing(left)}")
    return report


def _key_error(what: str, source: TensorSource, missing: list[str], unexpected: list[str]) -> str:
    lines = [f"{what} checkpoint {source.describe()} does not match the model:"]
    gone = set(missing)  # a layer missing altogether: its weight_scale need not be listed too
    missing = [k for k in missing if not (k.endswith(".weight_scale") and k[: -len("_scale")] in gone)]
    if missing:
        lines.append(f"  missing {len(missing)} tensor(s): {_listing(missing)}")
    if unexpected:
        lines.append(f"  unexpected {len(unexpected)} tensor(s): {_listing(unexpected)}")
    if any(k.endswith(".weight_scale") for k in unexpected):
        lines.append("  the file is quantized (it has *.weight_scale): choose a scheme of the file's format")
    elif missing and all(k.endswith(".weight_scale") for k in missing):
        lines.append("  the model expects quantized tensors the file lacks: is this the right file for the scheme?")
    else:
        lines.append("  is this the right model size / variant for the file?")
    return "\n".join(lines)


def _check_shapes(model, source, file_of, expected, qlayers, online, what) -> None:
    """Header-only checks of every tensor before anything is read (one error for all problems)."""
    problems, scale_missing, wrong_format = [], [], []
    for key, (shape, _) in expected.items():
        prefix, _, name = key.rpartition(".")
        if prefix in qlayers and (name != "bias"):
            continue  # quantized tensors: checked against the format below
        fshape, _ = source.meta(file_of[key])
        if fshape != shape:
            problems.append(f"{key}: file has {list(fshape)}, model expects {list(shape)}")
    for prefix, layer in qlayers.items():
        wmeta = source.meta(file_of[f"{prefix}.weight"])
        if prefix in online:
            fshape, fdtype = wmeta
            if not fdtype.is_floating_point or fdtype.itemsize == 1:
                scale_missing.append(
                    f"scale key missing: {prefix}.weight is {str(fdtype).replace('torch.', '')} (quantized) "
                    "but "
                    f"{prefix}.weight_scale is not in "
                    f"{source.where(file_of[f'{prefix}.weight'])}; the file is incomplete: "
                    "re-download or re-convert it"
                )
            elif fshape != (layer.out_features, layer.in_features):
                problems.append(f"{prefix}.weight: file has {list(fshape)}, model expects "
                                f"{[layer.out_features, layer.in_features]}")
            continue
        smeta = source.meta(file_of[f"{prefix}.weight_scale"])
        specs = layer.format.tensor_specs(layer.out_features, layer.in_features)
        found = layer_format(wmeta, smeta)
        if found is not None and found != layer.format.name:
            wrong_format.append((prefix, found))
        elif wmeta[1] != specs["weight"].dtype:
            wrong_format.append((prefix, str(wmeta[1])))
        elif wmeta[0] != specs["weight"].shape or _numel(smeta[0]) != _numel(specs["weight_scale"].shape):
            problems.append(f"{prefix}: file has weight {list(wmeta[0])} + weight_scale {list(smeta[0])}, "
                            "scheme "
                            f"{layer.scheme.name} expects {list(specs['weight'].shape)} + "
                            f"{list(specs['weight_scale'].shape)}")
    if scale_missing:
        raise CheckpointError(f"{what} checkpoint {source.describe()}: " + "\n  ".join(scale_missing[:SHOW]))
    if wrong_format:
        prefix, found = wrong_format[0]
        layer = qlayers[prefix]
        raise CheckpointError(
            f"{what} checkpoint {source.describe()} holds {found} weights (e.g. {prefix}), but scheme "
            f"{layer.scheme.name} needs {layer.format.name} ({layer.format.weight_dtype}): the file's dtype "
            "does not "
            f"match the scheme; choose a scheme of the file's format or convert the original to "
            f"{layer.format.short}"
        )
    if problems:
        raise CheckpointError(f"{what} checkpoint {source.describe()} has tensors of the wrong shape:\n  "
                              + "\n  ".join(problems[:SHOW]))


def _load_quant_layer(layer: QuantLinear, prefix: str, source: TensorSource, file_of: dict[str, str],
                      is_online: bool, device, quantizer: Quantizer, report: LoadReport,
                      scale_dtype: torch.dtype | None = None) -> None:
    bias = source.get(file_of[f"{prefix}.bias"]).to(device) if layer.bias is not None else None
    if is_online:
        weight = source.get(file_of[f"{prefix}.weight"]).to(device)
        tensors = quantizer(layer, weight)
        report.quantized_online.append(prefix)
    else:
        tensors = {}
        for name, spec in layer.format.tensor_specs(layer.out_features, layer.in_features).items():
            fkey = file_of[f"{prefix}.{name}"]
            t = source.get(fkey)
            if name == "weight" and t.dtype != spec.dtype:
                raise CheckpointError(
                    f"{prefix}.weight in {source.where(fkey)} is {t.dtype}, but scheme {layer.scheme.name} "
                    f"({layer.format.name}) expects {spec.dtype}: the file is for another format; choose a "
                    f"scheme of the file's format"
                )
            if t.numel() != _numel(spec.shape) or (name == "weight" and tuple(t.shape) != spec.shape):
                raise CheckpointError(
                    f"{prefix}.{name} in {source.where(fkey)} has shape {list(t.shape)}, scheme "
                    f"{layer.scheme.name} expects {list(spec.shape)}"
                )
            t = t.reshape(spec.shape)
            tensors[name] = t.to(device=device, dtype=spec.dtype) if name != "weight" else t.to(device)
        report.prequantized.append(prefix)
    if scale_dtype is not None:
        tensors["weight_scale"] = tensors["weight_scale"].to(scale_dtype).to(tensors["weight_scale"].dtype)
    layer.load_quantized(tensors, bias)
    report.tensors += len(tensors) + (bias is not None)
    report.bytes += layer.weight_bytes()


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
