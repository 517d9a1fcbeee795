"""Key names of the Wan DIT: diffusers' ``WanTransformer3DModel`` <-> the official (and LightX2V) names.

The map follows diffusers' scripts/convert_wan_to_diffusers.py. Note ``norm3`` (official, the affine
LayerNorm before cross-attention) is diffusers' ``norm2``; diffusers' ``norm1``/``norm3`` have no
parameters. Both directions are exact inverses on every key of both models.
"""

from __future__ import annotations

import re

# (official, diffusers) fragments of a key; official names on the left. Matched after "blocks.N."
# for block keys and at the start for top-level keys.
_BLOCK = (
    ("self_attn.q.", "attn1.to_q."), ("self_attn.k.", "attn1.to_k."), ("self_attn.v.", "attn1.to_v."),
    ("self_attn.o.", "attn1.to_out.0."), ("self_attn.norm_q.", "attn1.norm_q."),
    ("self_attn.norm_k.", "attn1.norm_k."),
    ("cross_attn.q.", "attn2.to_q."), ("cross_attn.k.", "attn2.to_k."), ("cross_attn.v.", "attn2.to_v."),
    ("cross_attn.o.", "attn2.to_out.0."), ("cross_attn.norm_q.", "attn2.norm_q."),
    ("cross_attn.norm_k.", "attn2.norm_k."), ("cross_attn.k_img.", "attn2.add_k_proj."),
    ("cross_attn.v_img.", "attn2.add_v_proj."), ("cross_attn.norm_k_img.", "attn2.norm_added_k."),
    ("norm3.", "norm2."), ("ffn.0.", "ffn.net.0.proj."), ("ffn.2.", "ffn.net.2."),
)
_BLOCK_WHOLE = (("modulation", "scale_shift_table"),)  # whole remainder of a block key
_TOP = (
    ("patch_embedding.", "patch_embedding."),
    ("text_embedding.0.", "condition_embedder.text_embedder.linear_1."),
    ("text_embedding.2.", "condition_embedder.text_embedder.linear_2."),
    ("time_embedding.0.", "condition_embedder.time_embedder.linear_1."),
    ("time_embedding.2.", "condition_embedder.time_embedder.linear_2."),
    ("time_projection.1.", "condition_embedder.time_proj."),
    ("head.head.", "proj_out."),
    ("img_emb.proj.0.", "condition_embedder.image_embedder.norm1."),
    ("img_emb.proj.1.", "condition_embedder.image_embedder.ff.net.0.proj."),
    ("img_emb.proj.3.", "condition_embedder.image_embedder.ff.net.2."),
    ("img_emb.proj.4.", "condition_embedder.image_embedder.norm2."),
)
_TOP_WHOLE = (
    ("head.modulation", "scale_shift_table"),
    ("img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed"),
)
_BLOCK_KEY = re.compile(r"(blocks\.\d+\.)(.*)")


def _translate(key: str, src: int) -> str | None:
    dst = 1 - src
    m = _BLOCK_KEY.fullmatch(key)
    if m:
        head, rest = m.groups()
        for pair in _BLOCK_WHOLE:
            if rest == pair[src]:
                return head + pair[dst]
        for pair in _BLOCK:
            if rest.startswith(pair[src]):
                return head + pair[dst] + rest[len(pair[src]):]
        return None
    for pair in _TOP_WHOLE:
        if key == pair[src]:
            return pair[dst]
    for pair in _TOP:
        if key.startswith(pair[src]):
            return pair[dst] + key[len(pair[src]):]
    return None


def diffusers_to_official(key: str) -> str | None:
    """The official Wan DIT key for a diffusers ``WanTransformer3DModel`` key; None if it has none."""
    return _translate(key, 1)


def official_to_diffusers(key: str) -> str | None:
    """The diffusers key for an official Wan DIT key; None if it has none."""
    return _translate(key, 0)


def looks_like_diffusers(keys) -> bool:
    """True when a DIT state dict uses diffusers names (``condition_embedder.*`` / ``blocks.N.attn1.*``)."""
    return any(k.startswith("condition_embedder.") or ".attn1." in k or k == "proj_out.weight" for k in keys)
