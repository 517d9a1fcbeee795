"""Key maps from transformers' encoders to the official Wan2.1 names.

- umT5: transformers ``UMT5EncoderModel`` (e.g. the ``text_encoder/`` of diffusers' Wan folders) ->
  ``models_t5_umt5-xxl-enc-bf16.pth`` names. One key to one key, usable as ``load_t5(key_map=...)``.
- CLIP: transformers ``CLIPVisionModel[WithProjection]`` -> ``visual.*`` of the open-clip file. q/k/v
  are fused into ``to_qkv`` and embeddings reshaped, so this one converts a whole state dict.
"""

from __future__ import annotations

import re

import torch

_T5_BLOCK = {
    "layer.0.SelfAttention.q.weight": "attn.q.weight",
    "layer.0.SelfAttention.k.weight": "attn.k.weight",
    "layer.0.SelfAttention.v.weight": "attn.v.weight",
    "layer.0.SelfAttention.o.weight": "attn.o.weight",
    "layer.0.SelfAttention.relative_attention_bias.weight": "pos_embedding.embedding.weight",
    "layer.0.layer_norm.weight": "norm1.weight",
    "layer.1.DenseReluDense.wi_0.weight": "ffn.gate.0.weight",  # the GELU branch
    "layer.1.DenseReluDense.wi_1.weight": "ffn.fc1.weight",  # the linear branch
    "layer.1.DenseReluDense.wo.weight": "ffn.fc2.weight",
    "layer.1.layer_norm.weight": "norm2.weight",
}
_T5_BLOCK_RE = re.compile(r"^encoder\.block\.(\d+)\.(.+)$")


def t5_key_from_hf(key: str, strict: bool = True) -> str | None:
    """Official umT5 key for a transformers ``UMT5EncoderModel`` key; None for the tied duplicate
    ``encoder.embed_tokens.weight`` (``shared.weight`` carries the embedding). Unknown keys raise, or
    with ``strict=False`` pass through unchanged (so a strict loader reports them as unexpected)."""
    if key == "shared.weight":
        return "token_embedding.weight"
    if key == "encoder.embed_tokens.weight":
        return None
    if key == "encoder.final_layer_norm.weight":
        return "norm.weight"
    m = _T5_BLOCK_RE.match(key)
    if m and m.group(2) in _T5_BLOCK:
        return f"blocks.{m.group(1)}.{_T5_BLOCK[m.group(2)]}"
    if not strict:
        return key
    raise KeyError(f"not a umT5 encoder key: {key!r}")


def t5_state_dict_from_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert a whole ``UMT5EncoderModel`` state dict to official names. A file with only
    ``encoder.embed_tokens.weight`` (no ``shared.weight``) is accepted too."""
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        new = t5_key_from_hf(key)
        if new is not None:
            out[new] = t
    if "token_embedding.weight" not in out and "encoder.embed_tokens.weight" in sd:
        out["token_embedding.weight"] = sd["encoder.embed_tokens.weight"]
    return out


_CLIP_LAYER = {
    "layer_norm1": "norm1",
    "self_attn.out_proj": "attn.proj",
    "layer_norm2": "norm2",
    "mlp.fc1": "mlp.0",
    "mlp.fc2": "mlp.2",
}
_CLIP_LAYER_RE = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def clip_state_dict_from_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert a transformers CLIP vision state dict to the official ``visual.*`` names.

    ``q_proj/k_proj/v_proj`` are concatenated (in that order) into ``attn.to_qkv``; the class and position
    embeddings get their leading singleton dims; ``visual_projection.weight`` [out, width] becomes
    ``visual.head`` [width, out] (only ``CLIPVisionModelWithProjection`` has it). Unknown keys raise.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, t in sd.items():
        if key == "vision_model.embeddings.position_ids":
            continue  # a constant buffer of arange(tokens), not a weight
        if key == "vision_model.embeddings.class_embedding":
            out["visual.cls_embedding"] = t.reshape(1, 1, -1)
        elif key == "vision_model.embeddings.patch_embedding.weight":
            out["visual.patch_embedding.weight"] = t
        elif key == "vision_model.embeddings.position_embedding.weight":
            out["visual.pos_embedding"] = t.unsqueeze(0)
        elif key.startswith("vision_model.pre_layrnorm."):
            out["visual.pre_norm." + key.rsplit(".", 1)[1]] = t
        elif key.startswith("vision_model.post_layernorm."):
            out["visual.post_norm." + key.rsplit(".", 1)[1]] = t
        elif key == "visual_projection.weight":
            out["visual.head"] = t.t().contiguous()
        else:
            m = _CLIP_LAYER_RE.match(key)
            if not m:
                raise KeyError(f"not a CLIP vision key: {key!r}")
            layer, name, kind = m.groups()
            if name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((layer, kind), {})[name.split(".")[1][0]] = t  # "q" / "k" / "v"
            elif name in _CLIP_LAYER:
                out[f"visual.transformer.{layer}.{_CLIP_LAYER[name]}.{kind}"] = t
            else:
                raise KeyError(f"not a CLIP vision key: {key!r}")
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise KeyError(f"layer {layer}: {kind} of q/k/v projections incomplete (have {sorted(parts)})")
        out[f"visual.transformer.{layer}.attn.to_qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out
