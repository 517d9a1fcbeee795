"""CLIP ViT tower: parity with transformers' CLIPVisionModelWithProjection, preprocessing, key map."""

import pytest
import torch
import torch.nn.functional as F

from lightx2v_quant.models.wan import CLIP_TINY, ClipConfig, ClipVisionEncoder, clip_preprocess, random_clip
from lightx2v_quant.models.wan.clip import CLIP_MEAN, CLIP_STD
from lightx2v_quant.models.wan.keymap_encoders import clip_state_dict_from_hf

transformers = pytest.importorskip("transformers")


def _hf_clip(cfg: ClipConfig):
    hf_cfg = transformers.CLIPVisionConfig(
        hidden_size=cfg.width, intermediate_size=cfg.mlp_dim, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, image_size=cfg.image_size, patch_size=cfg.patch_size,
        projection_dim=cfg.out_dim, layer_norm_eps=cfg.eps,
        hidden_act="gelu",  # exact GELU as open-clip's ViT-H (transformers' default is quick_gelu)
    )
    hf_cfg._attn_implementation = "eager"
    model = transformers.CLIPVisionModelWithProjection(hf_cfg).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # every tensor random, norms and biases included
        for name, p in model.named_parameters():
            if "layernorm" in name or "layer_norm" in name or "layrnorm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn(p.shape, generator=g))
            elif p.ndim == 2 and "position_embedding" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[1] ** -0.5)
            elif name.endswith("patch_embedding.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * (3 * cfg.patch_size**2) ** -0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def _ours_from_hf(hf, cfg: ClipConfig) -> ClipVisionEncoder:
    ours = ClipVisionEncoder(cfg).eval()
    ours.load_state_dict(clip_state_dict_from_hf(hf.state_dict()), strict=True)
    return ours


def test_clip_features_match_transformers_penultimate_hidden_state():
    cfg = CLIP_TINY
    hf = _hf_clip(cfg)
    ours = _ours_from_hf(hf, cfg)
    pixels = torch.randn(2, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        out = hf(pixel_values=pixels, output_hidden_states=True)
        feats = ours(pixels)
        embeds = ours.visual.image_embeds(pixels)
    assert feats.shape == (2, cfg.num_tokens, cfg.width)
    # hidden_states[k] = after k blocks (pre post-layernorm): ours = after num_layers - 1 blocks
    torch.testing.assert_close(feats, out.hidden_states[-2], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(feats, out.hidden_states[-1], atol=1e-3)  # not the last block's output
    torch.testing.assert_close(embeds, out.image_embeds, rtol=1e-5, atol=1e-5)


def _official_preprocess(img: torch.Tensor, size: int) -> torch.Tensor:
    """The official steps written out: [3, 1, H, W] -> transpose -> bicubic -> *0.5+0.5 -> Normalize."""
    v = F.interpolate(img.transpose(0, 1), size=(size, size), mode="bicubic", align_corners=False)
    v = v.mul_(0.5).add_(0.5)
    mean = torch.tensor(CLIP_MEAN)[:, None, None]
    std = torch.tensor(CLIP_STD)[:, None, None]
    return (v - mean) / std


def test_preprocess_is_the_official_resize_and_normalisation():
    img = torch.rand(3, 1, 300, 500) * 2 - 1  # downscale, non-square: squashed, not cropped
    ours = clip_preprocess(img, 224)
    ref = _official_preprocess(img, 224)
    assert ours.shape == (1, 3, 224, 224)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    # same result for the [3, H, W] form and in a batch with a different-sized image
    batch = clip_preprocess([img[:, 0], torch.rand(3, 1, 100, 90) * 2 - 1], 224)
    torch.testing.assert_close(batch[:1], ref, rtol=0, atol=1e-6)
    # no antialiasing: an antialiased resize (what CLIPImageProcessor/PIL do) gives another input
    aa = F.interpolate(img.transpose(0, 1), size=(224, 224), mode="bicubic", align_corners=False, antialias=True)
    aa = (aa.mul(0.5).add(0.5) - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    assert (ours - aa).abs().max() > 0.1


def test_preprocess_pil_equals_the_official_to_tensor_path():
    from PIL import Image

    arr = torch.randint(0, 256, (40, 70, 3), dtype=torch.uint8)
    pil = Image.fromarray(arr.numpy())
    as_tensor = arr.permute(2, 0, 1).float().div(255).sub(0.5).div(0.5)  # TF.to_tensor, then (x-0.5)/0.5
    torch.testing.assert_close(clip_preprocess(pil, 56), clip_preprocess(as_tensor, 56), rtol=0, atol=0)


def test_encode_runs_preprocessing_then_the_tower():
    model = random_clip(CLIP_TINY, torch.float32, seed=1)
    img = torch.rand(3, 1, 90, 120) * 2 - 1
    with torch.no_grad():
        ref = model(_official_preprocess(img, CLIP_TINY.image_size))
    torch.testing.assert_close(model.encode(img), ref, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"expected \[3, H, W\]"):
        model.encode(torch.rand(1, 3, 20, 20))


def test_fp16_model_keeps_layernorm_in_fp32():
    model = random_clip(CLIP_TINY, torch.float16, seed=1)
    ref = random_clip(CLIP_TINY, torch.float32, seed=1)
    img = torch.rand(3, 1, 64, 64) * 2 - 1
    out = model.encode(img)
    assert out.dtype == torch.float16 and model.visual.pre_norm.weight.dtype == torch.float16
    full = ref.encode(img)
    err = (out.float() - full).norm() / full.norm()
    assert err < 5e-3


def test_clip_key_map_produces_every_official_visual_key():
    hf = _hf_clip(CLIP_TINY)
    sd = clip_state_dict_from_hf(hf.state_dict())
    assert sorted(sd) == sorted(ClipVisionEncoder(CLIP_TINY).state_dict())
    w = hf.state_dict()
    qkv = sd["visual.transformer.1.attn.to_qkv.weight"]
    assert torch.equal(qkv[CLIP_TINY.width: 2 * CLIP_TINY.width],
                       w["vision_model.encoder.layers.1.self_attn.k_proj.weight"])
    assert sd["visual.head"].shape == (CLIP_TINY.width, CLIP_TINY.out_dim)
    with pytest.raises(KeyError, match="not a CLIP vision key"):
        clip_state_dict_from_hf({"text_model.embeddings.token_embedding.weight": torch.zeros(1)})
    partial = {k: v for k, v in w.items() if "layers.0.self_attn.v_proj" not in k}
    with pytest.raises(KeyError, match="incomplete"):
        clip_state_dict_from_hf(partial)
