"""The converter: byte-identical to LightX2V's rules for the DIT, T5 and CLIP (key selection, scale
dtype, rounding, .pth order), diffusers input, layouts, LoRA merge, and its refusals."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lightx2v_quant.checkpoints.convert import main
from lightx2v_quant.checkpoints.synthetic import clip_shapes, dit_shapes, random_state_dict, t5_shapes
from lightx2v_quant.models.wan.keymap import official_to_diffusers
from tests.checkpoints.spec import raw, same_bytes, spec_convert

DIT = dict(dim=128, ffn_dim=256, num_layers=2, text_dim=64, freq_dim=32, i2v=True, image_dim=128)
T5 = dict(dim=128, ffn_dim=256, num_layers=2, vocab=100, num_heads=4)
CLIP = dict(width=128, num_layers=2, mlp=256, tokens=5, embed_dim=64)
T5_NAME = "models_t5_umt5-xxl-enc"
CLIP_NAME = "models_clip_open-clip-xlm-roberta-large-vit-huge-14"


def _run(*args: str) -> int:
    return main([*map(str, args), "--no-progress"])


@pytest.mark.parametrize("linear", ["fp8", "int8"])
@pytest.mark.parametrize("src_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("nl", [None, torch.bfloat16])
def test_dit_file_is_byte_identical_to_lightx2v_rules(tmp_path, linear, src_dtype, nl):
    sd = random_state_dict(dit_shapes(**DIT), src_dtype, seed=1)
    sd["blocks.0.ffn.0.weight"][5] = 0.0  # an all-zero row
    save_file(sd, tmp_path / "diffusion_pytorch_model.safetensors")
    args = ["--non-linear-dtype", {None: "keep", torch.bfloat16: "bf16"}[nl]]
    assert _run(tmp_path, "-t", "dit", "-f", linear, *args) == 0
    out = tmp_path / linear / f"diffusion_pytorch_model_{linear}.safetensors"
    got = load_file(out)
    want = spec_convert(sd, "dit", linear, nl)
    assert same_bytes(got, want) == []
    assert got["blocks.1.cross_attn.k_img.weight_scale"].dtype == src_dtype  # scale keeps the source dtype
    assert got["blocks.1.cross_attn.k_img.weight_scale"].shape == (128, 1)
    assert "blocks.0.self_attn.norm_q.weight_scale" not in got and "img_emb.proj.1.weight_scale" not in got
    with safe_open(str(out), "pt") as f:
        assert f.metadata() is None  # LightX2V writes no metadata


@pytest.mark.parametrize("linear", ["fp8", "int8"])
def test_t5_pth_is_byte_identical_and_keeps_lightx2v_order(tmp_path, linear):
    sd = random_state_dict(t5_shapes(**T5), torch.bfloat16, seed=2)
    torch.save(sd, tmp_path / f"{T5_NAME}-bf16.pth")
    assert _run(tmp_path / f"{T5_NAME}-bf16.pth", "-t", "t5", "-f", linear) == 0
    got = torch.load(tmp_path / linear / f"{T5_NAME}-{linear}.pth", weights_only=True)
    want = spec_convert(sd, "t5", linear, None)
    assert list(got) == list(want)  # the source order, then the scales appended
    assert same_bytes(got, want) == []
    assert (
        "token_embedding.weight_scale" not in got
        and "blocks.0.pos_embedding.embedding.weight_scale" not in got
    )
    assert got["blocks.0.ffn.gate.0.weight_scale"].dtype == torch.bfloat16


@pytest.mark.parametrize("linear", ["fp8", "int8"])
@pytest.mark.parametrize("src_dtype", [torch.float16, torch.float32])
def test_clip_drops_textual_and_is_byte_identical(tmp_path, linear, src_dtype):
    sd = random_state_dict(clip_shapes(**CLIP), src_dtype, seed=3)
    torch.save(sd, tmp_path / f"{CLIP_NAME}.pth")
    assert _run(tmp_path, "-t", "clip", "-f", linear, "--non-linear-dtype", "fp16") == 0
    got = torch.load(tmp_path / linear / f"{CLIP_NAME}-{linear}.pth", weights_only=True)
    want = spec_convert(sd, "clip", linear, torch.float16)
    assert list(got) == list(want) and same_bytes(got, want) == []
    assert not any(k.startswith("textual.") for k in got)
    assert "log_scale" in got  # "scale" keys are kept (LightX2V's "ca" rule is for the DIT only)
    assert "visual.transformer.1.attn.to_qkv.weight_scale" in got and "visual.head_scale" not in got


def test_diffusers_dit_is_mapped_to_official_names(tmp_path):
    sd = random_state_dict(dit_shapes(**DIT), torch.float32, seed=4)
    diff = {official_to_diffusers(k): v for k, v in sd.items()}
    (tmp_path / "transformer").mkdir()
    save_file(diff, tmp_path / "transformer" / "diffusion_pytorch_model.safetensors")
    assert _run(tmp_path, "-t", "dit", "-f", "fp8", "-o", tmp_path / "out.safetensors") == 0
    got = load_file(tmp_path / "out.safetensors")
    assert same_bytes(got, spec_convert(sd, "dit", "fp8", None)) == []
    # not LightX2V's "ca" substring trap: scale_shift_table survives as head.modulation / blocks.N.modulation
    assert "head.modulation" in got and "blocks.1.modulation" in got


def test_per_block_layout_and_index(tmp_path):
    sd = random_state_dict(dit_shapes(**DIT), torch.float32, seed=5)
    save_file(sd, tmp_path / "x.safetensors")
    assert (
        _run(
            tmp_path / "x.safetensors",
            "-t",
            "dit",
            "-f",
            "int8",
            "--layout",
            "blocks",
            "-o",
            tmp_path / "blk",
        )
        == 0
    )
    names = sorted(p.name for p in (tmp_path / "blk").iterdir())
    assert names == [
        "block_0.safetensors",
        "block_1.safetensors",
        "diffusion_pytorch_model.safetensors.index.json",
        "non_block.safetensors",
    ]
    index = json.loads((tmp_path / "blk" / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert index["weight_map"]["blocks.1.ffn.2.weight_scale"] == "block_1.safetensors"
    assert index["weight_map"]["head.head.weight"] == "non_block.safetensors"
    merged = {}
    for n in names[:2] + names[3:]:
        merged.update(load_file(tmp_path / "blk" / n))
    assert same_bytes(merged, spec_convert(sd, "dit", "int8", None)) == []
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in merged.values())


def test_lora_is_merged_before_quantizing(tmp_path):
    sd = random_state_dict(dit_shapes(**DIT), torch.float32, seed=6)
    save_file(sd, tmp_path / "x.safetensors")
    up, down = torch.randn(128, 4) * 0.1, torch.randn(4, 128) * 0.1
    lora = {  # kohya/ComfyUI naming with alpha, diffusers A/B naming, and a bias diff
        "diffusion_model.blocks.0.self_attn.q.lora_up.weight": up,
        "diffusion_model.blocks.0.self_attn.q.lora_down.weight": down,
        "diffusion_model.blocks.0.self_attn.q.alpha": torch.tensor(2.0),
        "transformer.blocks.1.attn2.to_k.lora_B.weight": up.clone(),
        "transformer.blocks.1.attn2.to_k.lora_A.weight": down.clone(),
        "diffusion_model.blocks.1.norm3.diff_b": torch.ones(128),
    }
    save_file(lora, tmp_path / "lora.safetensors")
    assert (
        _run(
            tmp_path / "x.safetensors",
            "-t",
            "dit",
            "-f",
            "fp8",
            "-o",
            tmp_path / "o.safetensors",
            "--lora",
            tmp_path / "lora.safetensors",
            "--lora-strength",
            "0.5",
        )
        == 0
    )
    merged = dict(sd)
    merged["blocks.0.self_attn.q.weight"] = sd["blocks.0.self_attn.q.weight"] + 0.5 * (2.0 / 4) * (up @ down)
    merged["blocks.1.cross_attn.k.weight"] = sd["blocks.1.cross_attn.k.weight"] + 0.5 * (up @ down)
    merged["blocks.1.norm3.bias"] = sd["blocks.1.norm3.bias"] + 0.5
    got = load_file(tmp_path / "o.safetensors")
    assert same_bytes(got, spec_convert(merged, "dit", "fp8", None)) == []

    save_file(
        {"blocks.0.nothing.lora_up.weight": up, "blocks.0.nothing.lora_down.weight": down},
        tmp_path / "bad.safetensors",
    )
    assert (
        _run(
            tmp_path / "x.safetensors",
            "-t",
            "dit",
            "-f",
            "fp8",
            "-o",
            tmp_path / "o2.safetensors",
            "--lora",
            tmp_path / "bad.safetensors",
        )
        == 2
    )
    assert not (tmp_path / "o2.safetensors").exists()


def test_refusals(tmp_path, capsys):
    sd = random_state_dict(dit_shapes(**DIT), torch.float32, seed=7)
    save_file(sd, tmp_path / "x.safetensors")
    assert _run(tmp_path / "x.safetensors", "-t", "dit", "-f", "fp8", "-o", tmp_path / "q.safetensors") == 0
    before = (tmp_path / "q.safetensors").read_bytes()
    assert _run(tmp_path / "x.safetensors", "-t", "dit", "-f", "int8", "-o", tmp_path / "q.safetensors") == 2
    assert "--overwrite" in capsys.readouterr().err and (tmp_path / "q.safetensors").read_bytes() == before
    assert (
        _run(
            tmp_path / "x.safetensors",
            "-t",
            "dit",
            "-f",
            "int8",
            "-o",
            tmp_path / "q.safetensors",
            "--overwrite",
        )
        == 0
    )
    assert load_file(tmp_path / "q.safetensors")["blocks.0.ffn.0.weight"].dtype == torch.int8

    assert _run(tmp_path / "q.safetensors", "-t", "dit", "-f", "fp8", "-o", tmp_path / "qq.safetensors") == 2
    assert "already quantized" in capsys.readouterr().err
    assert _run(tmp_path / "x.safetensors", "-t", "clip", "-f", "fp8", "-o", tmp_path / "t.pth") == 2
    assert "wrong --model-type" in capsys.readouterr().err
    assert _run(tmp_path / "x.safetensors", "-t", "dit", "--scheme", "fp8-sgll") == 2
    assert "Did you mean fp8-sgl" in capsys.readouterr().err
    small = random_state_dict(dit_shapes(dim=96, ffn_dim=160, num_layers=1, text_dim=64, freq_dim=32))
    save_file(small, tmp_path / "small.safetensors")
    assert (
        _run(tmp_path / "small.safetensors", "-t", "dit", "-f", "int4-g128", "-o", tmp_path / "s.safetensors")
        == 2
    )
    assert "in_features % 128" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "q.safetensors",
        "small.safetensors",
        "x.safetensors",
    ]


def test_scheme_option_and_module_entry_point(tmp_path):
    import subprocess
    import sys

    save_file(random_state_dict(dit_shapes(**DIT)), tmp_path / "x.safetensors")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "lightx2v_quant.checkpoints.convert",
            str(tmp_path / "x.safetensors"),
            "-t",
            "dit",
            "--scheme",
            "fp8-b128-deepgemm",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    got = load_file(tmp_path / "fp8-b128" / "x_fp8-b128.safetensors")
    assert (
        got["blocks.0.ffn.0.weight_scale"].shape == (2, 1)
        and got["blocks.0.ffn.0.weight_scale"].dtype == torch.float32
    )
    assert raw(got["blocks.0.ffn.0.weight"]).numel() == 256 * 128


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["fp8", "int8", "int4-g128", "fp8-b128"])
def test_cuda_conversion_writes_the_cpu_bytes(tmp_path, fmt):
    sd = random_state_dict(dit_shapes(**DIT), torch.bfloat16, seed=8)
    save_file(sd, tmp_path / "x.safetensors")
    assert _run(tmp_path / "x.safetensors", "-t", "dit", "-f", fmt, "-o", tmp_path / "cpu.safetensors") == 0
    assert (
        _run(
            tmp_path / "x.safetensors",
            "-t",
            "dit",
            "-f",
            fmt,
            "-o",
            tmp_path / "gpu.safetensors",
            "--device",
            "cuda",
        )
        == 0
    )
    assert (tmp_path / "cpu.safetensors").read_bytes() == (tmp_path / "gpu.safetensors").read_bytes()
