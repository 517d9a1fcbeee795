"""Key names of the Wan DIT: official (``WanModel``, what our ``WanDiT`` uses) <-> diffusers
(``WanTransformer3DModel``). Used by the parity tests and by the converter for diffusers inputs.

Note the swap: the official ``norm3`` (affine LayerNorm before cross-attention) is diffusers' ``norm2``;
the parameter-free norms have no keys on either side.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")

# (official stem, diffusers stem); "{n}" is the block index. A key is a stem, optionally + .weight/.bias.
_STEMS: tuple[tuple[str, str], ...] = (
    ("patch_embedding", "patch_embedding"),
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("img_emb.proj.0", "condition_embedder.image_embedder.norm1"),
    ("img_emb.proj.1", "condition_embedder.image_embedder.ff.net.0.proj"),
    ("img_emb.proj.3", "condition_embedder.image_embedder.ff.net.2"),
    ("img_emb.proj.4", "condition_embedder.image_embedder.norm2"),
    ("img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed"),  # FLF2V only
    ("head.modulation", "scale_shift_table"),
    ("head.head", "proj_out"),
    ("blocks.{n}.modulation", "blocks.{n}.scale_shift_table"),
    ("blocks.{n}.self_attn.q", "blocks.{n}.attn1.to_q"),
    ("blocks.{n}.self_attn.k", "blocks.{n}.attn1.to_k"),
    ("blocks.{n}.self_attn.v", "blocks.{n}.attn1.to_v"),
    ("blocks.{n}.self_attn.o", "blocks.{n}.attn1.to_out.0"),
    ("blocks.{n}.self_attn.norm_q", "blocks.{n}.attn1.norm_q"),
    ("blocks.{n}.self_attn.norm_k", "blocks.{n}.attn1.norm_k"),
    ("blocks.{n}.norm3", "blocks.{n}.norm2"),
    ("blocks.{n}.cross_attn.q", "blocks.{n}.attn2.to_q"),
    ("blocks.{n}.cross_attn.k", "blocks.{n}.attn2.to_k"),
    ("blocks.{n}.cross_attn.v", "blocks.{n}.attn2.to_v"),
    ("blocks.{n}.cross_attn.o", "blocks.{n}.attn2.to_out.0"),
    ("blocks.{n}.cross_attn.norm_q", "blocks.{n}.attn2.norm_q"),
    ("blocks.{n}.cross_attn.norm_k", "blocks.{n}.attn2.norm_k"),
    ("blocks.{n}.cross_attn.k_img", "blocks.{n}.attn2.add_k_proj"),
    ("blocks.{n}.cross_attn.v_img", "blocks.{n}.attn2.add_v_proj"),
    ("blocks.{n}.cross_attn.norm_k_img", "blocks.{n}.attn2.norm_added_k"),
    ("blocks.{n}.ffn.0", "blocks.{n}.ffn.net.0.proj"),
    ("blocks.{n}.ffn.2", "blocks.{n}.ffn.net.2"),
)
# diffusers keys that carry no weight the official model has (diffusers itself ignores them on load)
_DIFFUSERS_IGNORED = re.compile(r"^blocks\.\d+\.attn2\.norm_added_q\.(weight|bias)$")


def _compile(stem: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(stem).replace(r"\{n\}", r"(?P<n>\d+)") + r"(?P<leaf>\.weight|\.bias)?$")


_TO_DIFFUSERS = [(_compile(o), d) for o, d in _STEMS]
_TO_OFFICIAL = [(_compile(d), o) for o, d in _STEMS]


def _convert(key: str, rules: list[tuple[re.Pattern[str], str]], src: str) -> str:
    for pattern, target in rules:
        m = pattern.match(key)
        if m:
            out = target.replace("{n}", m.group("n")) if "{n}" in target else target
            return out + (m.group("leaf") or "")
    raise KeyError(f"{key!r} is not a known {src} Wan DIT key")


def official_to_diffusers(key: str) -> str:
    """Official key (``blocks.3.norm3.weight``) -> diffusers key (``blocks.3.norm2.weight``)."""
    return _convert(key, _TO_DIFFUSERS, "official")


def diffusers_to_official(key: str) -> str | None:
    """diffusers key -> official key; None for keys diffusers itself ignores (``attn2.norm_added_q``)."""
    if _DIFFUSERS_IGNORED.match(key):
        return None
    return _convert(key, _TO_OFFICIAL, "diffusers")


def diffusers_state_dict_to_official(sd: Mapping[str, T]) -> dict[str, T]:
    """Rename every key of a diffusers ``WanTransformer3DModel`` state dict to the official names."""
    out: dict[str, T] = {}
    for key, value in sd.items():
        new = diffusers_to_official(key)
        if new is not None:
            out[new] = value
    return out


def official_state_dict_to_diffusers(sd: Mapping[str, T]) -> dict[str, T]:
    return {official_to_diffusers(k): v for k, v in sd.items()}


def looks_like_diffusers(keys) -> bool:
    """True when a DIT state dict uses diffusers names (``condition_embedder.*`` / ``blocks.N.attn1.*``)."""
    return any(k.startswith("condition_embedder.") or ".attn1." in k or k == "proj_out.weight" for k in keys)
