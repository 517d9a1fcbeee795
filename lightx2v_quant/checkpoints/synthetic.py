"""Official key names and shapes of the Wan DIT, umT5-XXL and CLIP checkpoints at any size, and random
tensors in that layout: tiny checkpoints for tests, 14B-shaped ones for the conversion benchmark.
(Layouts from the official Wan2.1 modules' state dicts; see wan_architecture.md sections 1.2, 3, 4.)
"""

from __future__ import annotations

from typing import Iterator

import torch

Shapes = dict[str, tuple[int, ...]]


def dit_shapes(dim: int = 1536, ffn_dim: int = 8960, num_layers: int = 30, in_dim: int = 16,
               out_dim: int = 16, text_dim: int = 4096, freq_dim: int = 256, i2v: bool = False,
               image_dim: int = 1280) -> Shapes:
    """The official WanModel state dict (``i2v`` adds img_emb and cross_attn.k_img/v_img/norm_k_img)."""
    s: Shapes = {
        "patch_embedding.weight": (dim, in_dim, 1, 2, 2), "patch_embedding.bias": (dim,),
        "text_embedding.0.weight": (dim, text_dim), "text_embedding.0.bias": (dim,),
        "text_embedding.2.weight": (dim, dim), "text_embedding.2.bias": (dim,),
        "time_embedding.0.weight": (dim, freq_dim), "time_embedding.0.bias": (dim,),
        "time_embedding.2.weight": (dim, dim), "time_embedding.2.bias": (dim,),
        "time_projection.1.weight": (6 * dim, dim), "time_projection.1.bias": (6 * dim,),
    }
    for i in range(num_layers):
        b = f"blocks.{i}."
        s[b + "modulation"] = (1, 6, dim)
        for attn in ("self_attn", "cross_attn"):
            for lin in ("q", "k", "v", "o"):
                s[f"{b}{attn}.{lin}.weight"] = (dim, dim)
                s[f"{b}{attn}.{lin}.bias"] = (dim,)
            s[f"{b}{attn}.norm_q.weight"] = (dim,)
            s[f"{b}{attn}.norm_k.weight"] = (dim,)
            if attn == "self_attn":
                s[b + "norm3.weight"] = (dim,)
                s[b + "norm3.bias"] = (dim,)
        if i2v:
            for lin in ("k_img", "v_img"):
                s[f"{b}cross_attn.{lin}.weight"] = (dim, dim)
                s[f"{b}cross_attn.{lin}.bias"] = (dim,)
            s[b + "cross_attn.norm_k_img.weight"] = (dim,)
        s[b + "ffn.0.weight"] = (ffn_dim, dim)
        s[b + "ffn.0.bias"] = (ffn_dim,)
        s[b + "ffn.2.weight"] = (dim, ffn_dim)
        s[b + "ffn.2.bias"] = (dim,)
    s["head.modulation"] = (1, 2, dim)
    s["head.head.weight"] = (out_dim * 4, dim)
    s["head.head.bias"] = (out_dim * 4,)
    if i2v:
        s.update({
            "img_emb.proj.0.weight": (image_dim,), "img_emb.proj.0.bias": (image_dim,),
            "img_emb.proj.1.weight": (image_dim, image_dim), "img_emb.proj.1.bias": (image_dim,),
            "img_emb.proj.3.weight": (dim, image_dim), "img_emb.proj.3.bias": (dim,),
            "img_emb.proj.4.weight": (dim,), "img_emb.proj.4.bias": (dim,),
        })
    return s


def t5_shapes(dim: int = 4096, ffn_dim: int = 10240, num_layers: int = 24, vocab: int = 256384,
              num_heads: int = 64, num_buckets: int = 32) -> Shapes:
    """The official umT5-XXL encoder state dict (no biases; a relative-position table per layer)."""
    s: Shapes = {"token_embedding.weight": (vocab, dim)}
    for i in range(num_layers):
        b = f"blocks.{i}."
        s[b + "norm1.weight"] = (dim,)
        for lin in ("q", "k", "v", "o"):
            s[f"{b}attn.{lin}.weight"] = (dim, dim)
        s[b + "norm2.weight"] = (dim,)
        s[b + "ffn.gate.0.weight"] = (ffn_dim, dim)
        s[b + "ffn.fc1.weight"] = (ffn_dim, dim)
        s[b + "ffn.fc2.weight"] = (dim, ffn_dim)
        s[b + "pos_embedding.embedding.weight"] = (num_buckets, num_heads)
    s["norm.weight"] = (dim,)
    return s


def clip_shapes(width: int = 1280, num_layers: int = 32, mlp: int = 5120, patch: int = 14, tokens: int = 257,
                embed_dim: int = 1024, textual_width: int = 64, textual_layers: int = 1) -> Shapes:
    """The official CLIP (XLM-RoBERTa + ViT-H/14) state dict, with a (shrunken) textual tower that
    converters drop."""
    s: Shapes = {
        "log_scale": (), "visual.cls_embedding": (1, 1, width), "visual.pos_embedding": (1, tokens, width),
        "visual.head": (width, embed_dim), "visual.patch_embedding.weight": (width, 3, patch, patch),
        "visual.pre_norm.weight": (width,), "visual.pre_norm.bias": (width,),
    }
    for i in range(num_layers):
        b = f"visual.transformer.{i}."
        for norm in ("norm1", "norm2"):
            s[f"{b}{norm}.weight"] = (width,)
            s[f"{b}{norm}.bias"] = (width,)
        s[b + "attn.to_qkv.weight"] = (3 * width, width)
        s[b + "attn.to_qkv.bias"] = (3 * width,)
        s[b + "attn.proj.weight"] = (width, width)
        s[b + "attn.proj.bias"] = (width,)
        s[b + "mlp.0.weight"] = (mlp, width)
        s[b + "mlp.0.bias"] = (mlp,)
        s[b + "mlp.2.weight"] = (width, mlp)
        s[b + "mlp.2.bias"] = (width,)
    s["visual.post_norm.weight"] = (width,)
    s["visual.post_norm.bias"] = (width,)
    s["textual.token_embedding.weight"] = (250, textual_width)
    for i in range(textual_layers):
        for lin in ("q", "k", "v", "o"):
            s[f"textual.blocks.{i}.attn.{lin}.weight"] = (textual_width, textual_width)
            s[f"textual.blocks.{i}.attn.{lin}.bias"] = (textual_width,)
    s["textual.head.0.weight"] = (textual_width, textual_width)
    return s


def random_tensors(shapes: Shapes, dtype: torch.dtype = torch.float32, seed: int = 0, std: float = 0.02,
                   device: str = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """(key, random CPU tensor) one at a time, in order; norms get weights near 1 like trained models.
    ``device="cuda"`` draws the numbers on the GPU (fast, for big benchmarks; other numbers than CPU)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    for key, shape in shapes.items():
        t = torch.randn(shape, generator=gen, dtype=torch.float32, device=device) * std
        if "norm" in key and key.endswith("weight") and len(shape) == 1:
            t = t + 1.0
        yield key, t.to(dtype).cpu()


def random_state_dict(shapes: Shapes, dtype: torch.dtype = torch.float32,
                      seed: int = 0) -> dict[str, torch.Tensor]:
    return dict(random_tensors(shapes, dtype, seed))
