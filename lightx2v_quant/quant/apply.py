"""Which linears of a model get quantized, and swapping them in.

A model declares the qualified names of its quantizable linears once, next to its code, as fnmatch
patterns (e.g. ``blocks.*.self_attn.q``). ``quantize_model`` replaces every matching ``nn.Linear`` by a
``QuantLinear``: quantizing the existing weights (online), or as an empty shell on the ``meta`` device
to be filled from a pre-quantized checkpoint.
"""

from __future__ import annotations

import fnmatch
from typing import Iterable, Iterator

from torch import nn

from lightx2v_quant.quant.linear import QuantLinear
from lightx2v_quant.quant.schemes import Scheme, get_scheme


def matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def quantizable_linears(model: nn.Module, patterns: Iterable[str]) -> Iterator[tuple[str, nn.Linear]]:
    """(qualified name, nn.Linear) for every linear whose name matches one of ``patterns``."""
    patterns = tuple(patterns)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and matches(name, patterns):
            yield name, module


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def quantize_model(
    model: nn.Module,
    scheme: Scheme | str,
    patterns: Iterable[str],
    *,
    kernel: str | None = None,
    empty: bool = False,
    fast_accum: bool = False,
) -> list[str]:
    """Swap the matching ``nn.Linear`` layers of ``model`` for ``QuantLinear``; return their names.

    ``empty=False`` quantizes the current weights with the format's reference quantizer.
    ``empty=True`` makes shells on the ``meta`` device whose tensors a checkpoint loader assigns.
    ``kernel`` overrides the scheme's kernel (only validation's explicit fallback does this).
    """
    scheme = get_scheme(scheme) if isinstance(scheme, str) else scheme
    targets = list(quantizable_linears(model, patterns))
    if not targets:
        raise ValueError(f"no nn.Linear in {type(model).__name__} matches {list(patterns)}")
    for name, linear in targets:
        if empty:
            new = QuantLinear.shell_for(linear, scheme, kernel=kernel, fast_accum=fast_accum)
        else:
            new = QuantLinear.from_linear(linear, scheme, kernel=kernel, fast_accum=fast_accum)
        _set_submodule(model, name, new)
    return [name for name, _ in targets]


def quant_layers(model: nn.Module) -> Iterator[tuple[str, QuantLinear]]:
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):
            yield name, module


def prepare_model(model: nn.Module) -> int:
    """Run every QuantLinear's kernel ``prepare`` (after loading and moving to the compute device)."""
    count = 0
    for _, layer in quant_layers(model):
        layer.prepare()
        count += 1
    return count


def kernels_used(model: nn.Module) -> dict[str, int]:
    """{"<scheme> via <kernel>": number of layers} for the report."""
    used: dict[str, int] = {}
    for _, layer in quant_layers(model):
        key = f"{layer.scheme.name} via {layer.kernel_name}"
        used[key] = used.get(key, 0) + 1
    return used


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and persistent buffer of ``model``."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())
