"""LoRA naming conventions and merge arithmetic (the converter's --lora)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from lightx2v_quant.checkpoints.lora import LoraSpec, load_loras
from lightx2v_quant.checkpoints.reader import CheckpointError
from lightx2v_quant.models.wan.keymap import diffusers_to_official

KEYS = [
    "blocks.0.self_attn.q.weight",
    "blocks.0.self_attn.q.bias",
    "blocks.0.ffn.0.weight",
    "blocks.0.norm3.weight",
]


def _merge(tmp_path, lora: dict, **spec):
    save_file(lora, tmp_path / "l.safetensors")
    return load_loras([LoraSpec(tmp_path / "l.safetensors", **spec)], KEYS, diffusers_to_official)


def test_kohya_and_dotted_up_down_names(tmp_path):
    up, down = torch.randn(8, 2), torch.randn(2, 8)
    m = _merge(
        tmp_path,
        {
            "lora_unet_blocks_0_self_attn_q.lora_up.weight": up,
            "lora_unet_blocks_0_self_attn_q.lora_down.weight": down,
            "blocks.0.ffn.0.lora.up.weight": up.clone(),
            "blocks.0.ffn.0.lora.down.weight": down.clone(),
            "blocks.0.ffn.0.alpha": torch.tensor(1.0),
        },
        strength=2.0,
    )
    w = torch.zeros(8, 8)
    assert torch.allclose(m.apply("blocks.0.self_attn.q.weight", w), 2.0 * up @ down)  # no alpha: factor 1
    assert torch.allclose(m.apply("blocks.0.ffn.0.weight", w), 2.0 * 0.5 * up @ down)  # alpha 1 / rank 2
    assert m.apply("blocks.0.norm3.weight", w) is w  # untouched keys pass through


def test_alpha_override_diff_and_dtype(tmp_path):
    up, down = torch.randn(8, 4), torch.randn(4, 8)
    m = _merge(
        tmp_path,
        {
            "blocks.0.self_attn.q.lora_B.weight": up,
            "blocks.0.self_attn.q.lora_A.weight": down,
            "blocks.0.self_attn.q.alpha": torch.tensor(4.0),
            "blocks.0.norm3.diff": torch.full((8,), 0.25),
        },
        alpha=2.0,
    )
    w = torch.randn(8, 8).bfloat16()
    out = m.apply("blocks.0.self_attn.q.weight", w)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, (w.float() + 0.5 * (up @ down)).bfloat16())
    assert torch.equal(m.apply("blocks.0.norm3.weight", torch.ones(8)), torch.full((8,), 1.25))


def test_bad_loras(tmp_path):
    with pytest.raises(
        CheckpointError, match=r"2 key\(s\) match no tensor of the model: blocks.9.ffn.0.lora_down.weight"
    ):
        _merge(
            tmp_path,
            {
                "blocks.9.ffn.0.lora_up.weight": torch.zeros(8, 2),
                "blocks.9.ffn.0.lora_down.weight": torch.zeros(2, 8),
            },
        )
    with pytest.raises(CheckpointError, match="only one of the up/down"):
        _merge(tmp_path, {"blocks.0.ffn.0.lora_up.weight": torch.zeros(8, 2)})
    m = _merge(
        tmp_path,
        {
            "blocks.0.ffn.0.lora_up.weight": torch.zeros(9, 2),
            "blocks.0.ffn.0.lora_down.weight": torch.zeros(2, 8),
        },
    )
    with pytest.raises(CheckpointError, match=r"has shape \[9, 8\], the weight \[8, 8\]"):
        m.apply("blocks.0.ffn.0.weight", torch.zeros(8, 8))
