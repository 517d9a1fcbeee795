"""Checkpoint discovery: LightX2V's folder order, format preference with fallback to the original,
explicit ckpt files and folders, Wan2.2 experts, encoders by name, and the ambiguity errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from lightx2v_quant.checkpoints.discovery import find_dit, find_encoder, list_dit_checkpoints
from lightx2v_quant.checkpoints.reader import CheckpointError
from lightx2v_quant.checkpoints.synthetic import dit_shapes, random_state_dict, t5_shapes
from tests.checkpoints.spec import spec_convert

SHAPES = dit_shapes(dim=128, ffn_dim=256, num_layers=1, text_dim=64, freq_dim=32)
T5_NAME = "models_t5_umt5-xxl-enc"


@pytest.fixture(scope="module")
def dit_files():
    sd = random_state_dict(SHAPES, seed=1)
    return {
        "original": sd,
        "fp8": spec_convert(sd, "dit", "fp8", None),
        "int8": spec_convert(sd, "dit", "int8", None),
    }


def _put(path, sd):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, path)
    return path


def test_folder_order_and_format_preference(tmp_path, dit_files):
    _put(tmp_path / "diffusion_pytorch_model.safetensors", dit_files["original"])
    _put(tmp_path / "original" / "dit.safetensors", dit_files["original"])
    _put(tmp_path / "fp8" / "a.safetensors", dit_files["fp8"])
    _put(tmp_path / "distill_fp8" / "b.safetensors", dit_files["fp8"])
    _put(tmp_path / "int8" / "c.safetensors", dit_files["int8"])
    f = find_dit(tmp_path, "w8a8-fp8-channel")
    assert (f.path, f.kind, f.format) == (
        tmp_path / "distill_fp8" / "b.safetensors",
        "prequantized",
        "w8a8-fp8-channel",
    )
    assert "distill_fp8" in f.describe()
    assert find_dit(tmp_path, "int8").path == tmp_path / "int8" / "c.safetensors"
    f = find_dit(tmp_path, "int4-g128")  # no int4 file: the original (original/ before the root), online
    assert (f.path, f.kind) == (tmp_path / "original" / "dit.safetensors", "original")
    assert "quantized to int4-g128 while loading" in f.describe()
    assert find_dit(tmp_path, None).kind == "original"


def test_prequantized_file_wins_over_an_original_in_an_earlier_folder(tmp_path, dit_files):
    _put(tmp_path / "distill_models" / "distill.safetensors", dit_files["original"])
    _put(tmp_path / "fp8" / "a.safetensors", dit_files["fp8"])
    assert find_dit(tmp_path, "fp8").path == tmp_path / "fp8" / "a.safetensors"
    assert find_dit(tmp_path, "int8").path == tmp_path / "distill_models" / "distill.safetensors"


def test_two_dit_checkpoints_in_one_folder_is_an_error_naming_both(tmp_path, dit_files):
    _put(tmp_path / "wan_fp8.safetensors", dit_files["fp8"])
    _put(tmp_path / "wan_int8.safetensors", dit_files["int8"])
    with pytest.raises(CheckpointError) as e:
        find_dit(tmp_path, "fp8")
    msg = str(e.value)
    assert "2 DIT checkpoints" in msg and "wan_fp8.safetensors" in msg and "wan_int8.safetensors" in msg
    assert "merge" in msg and "dit_quant.ckpt" in msg
    f = find_dit(tmp_path, "fp8", ckpt=tmp_path / "wan_fp8.safetensors")  # naming one resolves it
    assert f.kind == "prequantized" and "dit_quant.ckpt" in f.reason


def test_a_folder_with_nothing_usable_lists_what_was_looked_for(tmp_path):
    (tmp_path / "fp8").mkdir()
    (tmp_path / "Wan2.1_VAE.pth").write_bytes(b"x")
    torch.save({"a": torch.zeros(1)}, tmp_path / f"{T5_NAME}-bf16.pth")
    with pytest.raises(CheckpointError) as e:
        find_dit(tmp_path, "fp8")
    msg = str(e.value)
    assert "nothing usable" in msg and f"{tmp_path}/fp8/" in msg and f"{tmp_path}/distill_int8/" in msg
    assert "model.path" in msg
    with pytest.raises(CheckpointError, match="nothing usable in dit_quant.ckpt"):
        find_dit(None, "fp8", ckpt=tmp_path / "fp8")
    with pytest.raises(CheckpointError, match="model.path is not set"):
        find_dit(None, "fp8")


def test_only_other_formats_and_no_original(tmp_path, dit_files):
    _put(tmp_path / "int8" / "c.safetensors", dit_files["int8"])
    with pytest.raises(CheckpointError) as e:
        find_dit(tmp_path, "fp8", scheme="fp8-sgl")
    assert "scheme fp8-sgl" in str(e.value) and "c.safetensors: w8a8-int8-channel" in str(e.value)
    with pytest.raises(CheckpointError, match="for an unquantized run"):
        find_dit(tmp_path, None)


def test_explicit_ckpt_file_and_folder(tmp_path, dit_files):
    p = _put(tmp_path / "x" / "any_name.safetensors", dit_files["int8"])
    assert find_dit(None, "int8", ckpt=p).path == p
    assert find_dit(tmp_path / "elsewhere", "int8", ckpt=tmp_path / "x").path == p
    with pytest.raises(
        CheckpointError, match=r"holds w8a8-int8-channel weights, but scheme fp8-sgl \(w8a8-fp8-channel\)"
    ):
        find_dit(None, "fp8", ckpt=p, scheme="fp8-sgl")
    o = _put(tmp_path / "y" / "orig.safetensors", dit_files["original"])
    assert find_dit(None, "fp8", ckpt=o).kind == "original"  # an original under a scheme: online
    with pytest.raises(CheckpointError, match="does not exist"):
        find_dit(None, "fp8", ckpt=tmp_path / "missing.safetensors")


def test_checkpoint_shapes_in_one_folder(tmp_path, dit_files):
    """Per-block sets, an index with shards and index-less shards each count as one checkpoint."""
    sd = dit_files["fp8"]
    keys = list(sd)
    half = len(keys) // 2
    _put(tmp_path / "s" / "model-00001-of-00002.safetensors", {k: sd[k] for k in keys[:half]})
    _put(tmp_path / "s" / "model-00002-of-00002.safetensors", {k: sd[k] for k in keys[half:]})
    found = list_dit_checkpoints(tmp_path / "s")
    assert len(found) == 1 and len(found[0]) == 2
    f = find_dit(None, "fp8", ckpt=tmp_path / "s")
    assert f.kind == "prequantized" and len(f.paths) == 2 and len(f.open().keys()) == len(keys)

    _put(tmp_path / "b" / "non_block.safetensors", {k: sd[k] for k in keys if not k.startswith("blocks.")})
    _put(tmp_path / "b" / "block_0.safetensors", {k: sd[k] for k in keys if k.startswith("blocks.0.")})
    (tmp_path / "b" / "diffusion_pytorch_model.safetensors.index.json").write_text(
        '{"weight_map": {"head.head.weight": "non_block.safetensors", '
        '"blocks.0.ffn.0.weight": "block_0.safetensors"}}'
    )
    assert list_dit_checkpoints(tmp_path / "b") == [(tmp_path / "b",)]
    assert find_dit(None, "fp8", ckpt=tmp_path / "b").path == tmp_path / "b"


def test_wan22_experts(tmp_path, dit_files):
    _put(tmp_path / "high_noise_model" / "diffusion_pytorch_model.safetensors", dit_files["original"])
    _put(tmp_path / "low_noise_model" / "fp8" / "low.safetensors", dit_files["fp8"])
    _put(tmp_path / "low_noise_model" / "diffusion_pytorch_model.safetensors", dit_files["original"])
    assert find_dit(tmp_path, "fp8", expert="high_noise").kind == "original"
    assert (
        find_dit(tmp_path, "fp8", expert="low_noise").path
        == tmp_path / "low_noise_model" / "fp8" / "low.safetensors"
    )
    # LightX2V's published names: both experts in one folder, told apart by name
    ck = tmp_path / "distill"
    _put(ck / "wan2.2_i2v_A14b_high_noise_scaled_fp8_e4m3_lightx2v_4step.safetensors", dit_files["fp8"])
    _put(ck / "wan2.2_i2v_A14b_low_noise_scaled_fp8_e4m3_lightx2v_4step.safetensors", dit_files["fp8"])
    assert "low_noise" in find_dit(None, "fp8", ckpt=ck, expert="low_noise").path.name
    with pytest.raises(CheckpointError, match="2 DIT checkpoints"):
        find_dit(None, "fp8", ckpt=ck)


def test_encoders_by_lightx2v_names(tmp_path):
    sd = random_state_dict(
        t5_shapes(dim=128, ffn_dim=256, num_layers=1, vocab=50, num_heads=4), torch.bfloat16
    )
    torch.save(sd, tmp_path / f"{T5_NAME}-bf16.pth")
    (tmp_path / "fp8").mkdir()
    torch.save(spec_convert(sd, "t5", "fp8", None), tmp_path / "fp8" / f"{T5_NAME}-fp8.pth")
    torch.save(spec_convert(sd, "t5", "int8", None), tmp_path / "fp8" / f"{T5_NAME}-int8.pth")
    f = find_encoder("t5", tmp_path, "fp8")
    assert f.path == tmp_path / "fp8" / f"{T5_NAME}-fp8.pth" and f.kind == "prequantized"
    f = find_encoder("t5", tmp_path, "int8")  # int8/ does not exist; fp8/ holds it under the int8 name
    assert f.path == tmp_path / "fp8" / f"{T5_NAME}-int8.pth"
    f = find_encoder("t5", tmp_path, "fp8-b128")
    assert f.path == tmp_path / f"{T5_NAME}-bf16.pth" and f.kind == "original"
    (tmp_path / "int8").mkdir()
    torch.save(spec_convert(sd, "t5", "fp8", None), tmp_path / "int8" / f"{T5_NAME}-int8.pth")  # misnamed
    with pytest.raises(CheckpointError, match="holds w8a8-fp8-channel weights, but format w8a8-int8-channel"):
        find_encoder("t5", tmp_path, "int8")
    with pytest.raises(CheckpointError) as e:
        find_encoder("clip", tmp_path, "fp8")
    assert "nothing usable" in str(
        e.value
    ) and "models_clip_open-clip-xlm-roberta-large-vit-huge-14-fp8.pth" in str(e.value)
