"""What LightX2V's files look like per component (DIT, T5, CLIP): which tensors are quantized, file
names, folder search order and block structure. One place for the conventions shared by the
converter, the discovery and the validation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lightx2v_quant.quant.formats import FORMATS, Format

COMPONENTS = ("dit", "t5", "clip")

# LightX2V's find_torch_model_path order (then model_path itself, ""). Our own formats' folders
# (int4-g128/, fp8-b128/) sit after LightX2V's quantized ones.
SEARCH_FOLDERS: tuple[str, ...] = (
    "distill_int8",
    "distill_fp8",
    "distill_models",
    "int8",
    "fp8",
    "int4-g128",
    "fp8-b128",
    "original",
    "",
)

T5_STEM = "models_t5_umt5-xxl-enc"
CLIP_STEM = "models_clip_open-clip-xlm-roberta-large-vit-huge-14"
DIT_DEFAULT_STEM = "diffusion_pytorch_model"
EXPERTS = ("high_noise", "low_noise")  # Wan2.2 MoE: <model.path>/<expert>_model/


@dataclass(frozen=True)
class ComponentRules:
    """LightX2V's converter rule for one model type: a 2-D tensor is quantized when
    ``key.split('.')[key_idx]`` is one of ``targets``; keys starting with a ``drop_prefixes`` entry
    are not part of the model and are left out of converted files."""

    name: str
    key_idx: int
    targets: frozenset[str]
    block_pattern: re.Pattern
    drop_prefixes: tuple[str, ...] = ()

    def is_target(self, key: str, ndim: int) -> bool:
        parts = key.split(".")
        return ndim == 2 and len(parts) > self.key_idx and parts[self.key_idx] in self.targets

    def dropped(self, key: str) -> bool:
        return key.startswith(self.drop_prefixes)

    def block_of(self, key: str) -> int | None:
        m = self.block_pattern.match(key)
        return int(m.group(1)) if m else None


RULES: dict[str, ComponentRules] = {
    "dit": ComponentRules(
        "dit", 2, frozenset({"self_attn", "cross_attn", "ffn"}), re.compile(r"blocks\.(\d+)\.")
    ),
    "t5": ComponentRules("t5", 2, frozenset({"attn", "ffn"}), re.compile(r"blocks\.(\d+)\.")),
    "clip": ComponentRules(
        "clip",
        3,
        frozenset({"attn", "mlp"}),
        re.compile(r"visual\.transformer\.(\d+)\."),
        drop_prefixes=("textual.",),
    ),
}


def rules(component: str) -> ComponentRules:
    try:
        return RULES[component]
    except KeyError:
        raise ValueError(f"unknown model type {component!r}; choose one of {', '.join(COMPONENTS)}") from None


def format_by_name(name: str) -> Format:
    """A format by its full name (``w8a8-fp8-channel``) or short name (``fp8``, ``int4-g128``)."""
    for f in FORMATS.values():
        if name in (f.name, f.short):
            return f
    shorts = ", ".join(f"{f.short} ({f.name})" for f in FORMATS.values())
    raise ValueError(f"unknown format {name!r}; formats: {shorts}")


def encoder_file_name(component: str, fmt: Format | None, suffix: str = ".pth") -> str:
    """LightX2V's file names: ``models_t5_umt5-xxl-enc-{bf16|fp8|int8}.pth`` and
    ``models_clip_open-clip-xlm-roberta-large-vit-huge-14[-fp8|-int8].pth``. Our formats take their
    short name (``-int4-g128``, ``-fp8-b128``); LightX2V has no files of those formats."""
    if component == "t5":
        return f"{T5_STEM}-{fmt.short if fmt else 'bf16'}{suffix}"
    if component == "clip":
        return f"{CLIP_STEM}{'-' + fmt.short if fmt else ''}{suffix}"
    raise ValueError(f"{component} has no fixed file name")


def dit_file_name(stem: str, fmt: Format | None) -> str:
    return f"{stem}{'_' + fmt.short if fmt else ''}.safetensors"


def expert_tag(name: str) -> str | None:
    """``high_noise`` / ``low_noise`` when a file name carries one (LightX2V's Wan2.2 file names)."""
    for e in EXPERTS:
        if e in name:
            return e
    return None
