"""The synthetic official layouts (tests, benchmark) against the real models: our WanDiT, diffusers'
WanTransformer3DModel through the key map."""

from __future__ import annotations

import pytest
import torch

from lightx2v_quant.checkpoints.synthetic import dit_shapes
from lightx2v_quant.models.wan.keymap import (
    diffusers_to_official,
    looks_like_diffusers,
    official_to_diffusers,
)


def _diffusers_state(**extra):
    diffusers = pytest.importorskip("diffusers")
    model = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=36,
        out_channels=16,
        text_dim=64,
        freq_dim=32,
        ffn_dim=64,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=1e-6,
        image_dim=48,
        added_kv_proj_dim=32,
        **extra,
    )
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_every_diffusers_key_maps_to_the_official_layout():
    diff = _diffusers_state()
    official = dit_shapes(
        dim=32, ffn_dim=64, num_layers=2, in_dim=36, text_dim=64, freq_dim=32, i2v=True, image_dim=48
    )
    mapped = {diffusers_to_official(k): s for k, s in diff.items()}
    assert None not in mapped
    assert mapped == official  # same key set and same shapes
    assert all(official_to_diffusers(diffusers_to_official(k)) == k for k in diff)
    assert looks_like_diffusers(diff) and not looks_like_diffusers(official)


def test_flf2v_image_position_embedding():
    diff = _diffusers_state(pos_embed_seq_len=2 * 257)
    assert diffusers_to_official("condition_embedder.image_embedder.pos_embed") == "img_emb.emb_pos"
    assert "condition_embedder.image_embedder.pos_embed" in diff


def test_unknown_keys():
    with pytest.raises(KeyError):
        diffusers_to_official("blocks.0.attn1.to_out.1.weight")
    assert diffusers_to_official("blocks.0.attn2.norm_added_q.weight") is None  # diffusers ignores it too
    assert official_to_diffusers("blocks.3.norm3.weight") == "blocks.3.norm2.weight"
    assert official_to_diffusers("head.modulation") == "scale_shift_table"


@pytest.mark.parametrize("i2v", [False, True], ids=["t2v", "i2v"])
def test_dit_shapes_equal_our_wan_dit(i2v):
    from lightx2v_quant.models.wan import build_dit
    from tests.models.dit_util import tiny

    cfg = tiny(i2v)
    model = build_dit(cfg, torch.float32, "meta")
    real = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    shapes = dit_shapes(
        dim=cfg.dim,
        ffn_dim=cfg.ffn_dim,
        num_layers=cfg.num_layers,
        in_dim=cfg.in_dim,
        out_dim=cfg.out_dim,
        text_dim=cfg.text_dim,
        freq_dim=cfg.freq_dim,
        i2v=i2v,
        image_dim=cfg.image_dim or 1280,
    )
    assert shapes == real
