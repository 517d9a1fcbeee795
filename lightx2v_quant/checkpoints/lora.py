"""Merge LoRA files into weights before quantizing (the converter's ``--lora``).

Understood naming, per target layer ``t`` (official key names, or diffusers names for the DIT, with an
optional ``diffusion_model.`` / ``transformer.`` / ``base_model.model.`` prefix, or kohya's
``lora_unet_<t with _>``): ``t.lora_up.weight`` + ``t.lora_down.weight``, ``t.lora_B.weight`` +
``t.lora_A.weight``, ``t.lora.up.weight`` + ``t.lora.down.weight``, an optional ``t.alpha``; full
deltas ``t.diff`` (weight) and ``t.diff_b`` (bias). A LoRA key that matches no tensor is an error.

Merged weight = W + strength * (alpha / rank) * up @ down, computed in fp32 and cast back to W's dtype
(alpha defaults to the file's ``alpha``, else rank, i.e. a factor of 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch

from lightx2v_quant.checkpoints.reader import CheckpointError, open_checkpoint

_PAIRS = (
    (".lora_up.weight", ".lora_down.weight"),
    (".lora_B.weight", ".lora_A.weight"),
    (".lora.up.weight", ".lora.down.weight"),
)
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "base_model.model.", "transformer.", "model.")
_KOHYA = "lora_unet_"


@dataclass
class LoraSpec:
    path: Path
    strength: float = 1.0
    alpha: float | None = None  # overrides the file's alpha when set


@dataclass
class _Delta:
    up: torch.Tensor | None = None
    down: torch.Tensor | None = None
    alpha: float | None = None
    diff: torch.Tensor | None = None
    diff_b: torch.Tensor | None = None


@dataclass
class LoraMerger:
    """Deltas per target tensor key; ``apply(key, tensor)`` returns the merged tensor."""

    deltas: dict[str, list[tuple[torch.Tensor | Callable[[], torch.Tensor], float]]] = field(
        default_factory=dict
    )
    merged: set[str] = field(default_factory=set)

    def __contains__(self, key: str) -> bool:
        return key in self.deltas

    def apply(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        parts = self.deltas.get(key)
        if not parts:
            return tensor
        out = tensor.float()
        for delta, factor in parts:
            d = delta() if callable(delta) else delta
            if tuple(d.shape) != tuple(out.shape):
                raise CheckpointError(
                    f"LoRA delta for {key} has shape {list(d.shape)}, the weight {list(out.shape)}"
                )
            out = out + factor * d.to(device=out.device, dtype=torch.float32)
        self.merged.add(key)
        return out.to(tensor.dtype)


def _split(key: str) -> tuple[str, str] | None:
    """(module name, role) of a LoRA key."""
    for up, down in _PAIRS:
        if key.endswith(up):
            return key[: -len(up)], "up"
        if key.endswith(down):
            return key[: -len(down)], "down"
    for suffix, role in ((".alpha", "alpha"), (".diff_b", "diff_b"), (".diff", "diff")):
        if key.endswith(suffix):
            return key[: -len(suffix)], role
    return None


def _resolver(target_keys: Iterable[str], key_map: Callable[[str], str | None] | None):
    """module name in a LoRA file -> module name in the target state dict (None if unknown)."""
    keys = set(target_keys)
    modules = {k.rsplit(".", 1)[0] for k in keys if k.endswith((".weight", ".bias"))}
    kohya = {m.replace(".", "_"): m for m in modules}

    def resolve(name: str) -> str | None:
        candidates = [name] + [name[len(p) :] for p in _PREFIXES if name.startswith(p)]
        for c in candidates:
            if c in modules:
                return c
            if key_map is not None:
                try:
                    mapped = key_map(c + ".weight")
                except KeyError:  # a key map may raise for names it does not know
                    mapped = None
                if mapped is not None and mapped in keys:
                    return mapped.rsplit(".", 1)[0]
        if name.startswith(_KOHYA):
            return kohya.get(name[len(_KOHYA) :])
        return None

    return resolve


def load_loras(
    specs: Iterable[LoraSpec], target_keys: Iterable[str], key_map: Callable[[str], str | None] | None = None
) -> LoraMerger:
    """Read LoRA files and bind their deltas to ``target_keys`` (the converted checkpoint's keys)."""
    target_keys = list(target_keys)
    resolve = _resolver(target_keys, key_map)
    merger = LoraMerger()
    for spec in specs:
        src = open_checkpoint(spec.path)
        groups: dict[str, _Delta] = {}
        unknown: list[str] = []
        for key in src.keys():
            split = _split(key)
            module = resolve(split[0]) if split else None
            if module is None:
                unknown.append(key)
                continue
            d = groups.setdefault(module, _Delta())
            t = src.get(key)
            role = split[1]
            if role == "alpha":
                d.alpha = float(t.float().reshape(-1)[0])
            else:
                setattr(d, role, t)
        if unknown:
            shown = ", ".join(unknown[:8]) + (f" ... ({len(unknown) - 8} more)" if len(unknown) > 8 else "")
            raise CheckpointError(
                f"LoRA {spec.path}: {len(unknown)} key(s) match no tensor of the model: {shown}"
            )
        for module, d in groups.items():
            _bind(merger, spec, module, d)
    return merger


def _bind(merger: LoraMerger, spec: LoraSpec, module: str, d: _Delta) -> None:
    if (d.up is None) != (d.down is None):
        raise CheckpointError(f"LoRA {spec.path}: {module} has only one of the up/down (B/A) matrices")
    if d.up is not None:
        if d.up.dim() != 2 or d.down.dim() != 2:
            raise CheckpointError(
                f"LoRA {spec.path}: {module}: only linear (2-D) low-rank deltas are supported"
            )
        rank = d.down.shape[0]
        alpha = spec.alpha if spec.alpha is not None else (d.alpha if d.alpha is not None else rank)
        up, down = d.up, d.down
        merger.deltas.setdefault(f"{module}.weight", []).append(
            (lambda up=up, down=down: up.float() @ down.float(), spec.strength * alpha / rank)
        )
    if d.diff is not None:
        merger.deltas.setdefault(f"{module}.weight", []).append((d.diff, spec.strength))
    if d.diff_b is not None:
        merger.deltas.setdefault(f"{module}.bias", []).append((d.diff_b, spec.strength))
