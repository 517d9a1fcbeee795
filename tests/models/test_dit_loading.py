"""Official-layout DIT checkpoints (single safetensors, shards + index, folders) through load_dit, and the
errors for a missing key, an extra key, a wrong shape and a config.json of another model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lightx2v_quant.checkpoints.reader import CheckpointError
from lightx2v_quant.models.wan import WanDiT, load_dit, random_dit
from lightx2v_quant.quant.linear import QuantLinear
from tests.models.dit_util import inputs, tiny


def _official_state_dict(cfg, seed: int = 0) -> dict[str, torch.Tensor]:
    """fp32 tensors with the official key names, as the released files hold them."""
    return {k: v.contiguous() for k, v in random_dit(cfg, torch.float32, "cpu", seed).state_dict().items()}


def _write_sharded(sd: dict[str, torch.Tensor], folder: Path, shards: int = 2) -> Path:
    keys = sorted(sd)
    weight_map = {}
    for i in range(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[i::shards]
        save_file({k: sd[k] for k in part}, str(folder / name))
        weight_map.update({k: name for k in part})
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return index


def _config_json(cfg) -> dict:
    return {"_class_name": "WanModel", "_diffusers_version": "0.30.0", "dim": cfg.dim, "eps": cfg.eps,
            "ffn_dim": cfg.ffn_dim, "freq_dim": cfg.freq_dim, "in_dim": cfg.in_dim,
            "model_type": "i2v" if cfg.image_dim else "t2v", "num_heads": cfg.num_heads,
            "num_layers": cfg.num_layers, "out_dim": cfg.out_dim, "text_len": cfg.text_len}


@pytest.fixture(scope="module")
def t2v():
    cfg = tiny()
    return cfg, _official_state_dict(cfg)


def _same_weights(model: WanDiT, sd: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert set(got) == set(sd)
    for k, v in sd.items():
        torch.testing.assert_close(got[k].float(), v.to(got[k].dtype).float(), rtol=0, atol=0, msg=k)


def test_single_file_and_folder(tmp_path, t2v):
    cfg, sd = t2v
    save_file(sd, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(_config_json(cfg)))
    by_file = load_dit(tmp_path / "diffusion_pytorch_model.safetensors", cfg, torch.float32)
    _same_weights(by_file, sd)
    by_folder = load_dit(tmp_path, cfg, torch.bfloat16)
    assert by_folder.blocks[0].self_attn.q.weight.dtype == torch.bfloat16
    _same_weights(by_folder, sd)
    assert by_folder.load_report.tensors == len(sd)
    ref = WanDiT(cfg, dtype=torch.float32)
    ref.load_state_dict(sd)
    inp = inputs(cfg)
    with torch.no_grad():
        torch.testing.assert_close(by_file(**inp), ref(**inp), rtol=0, atol=0)


def test_sharded_with_index(tmp_path, t2v):
    cfg, sd = t2v
    index = _write_sharded(sd, tmp_path, shards=3)
    _same_weights(load_dit(index, cfg, torch.float32), sd)
    _same_weights(load_dit(tmp_path, cfg, torch.float32), sd)  # the folder: the index wins
    shards = sorted(tmp_path.glob("*.safetensors"))
    _same_weights(load_dit(shards, cfg, torch.float32), sd)


def test_i2v_checkpoint_with_sensitive_fp32(tmp_path):
    cfg = tiny(True)
    sd = _official_state_dict(cfg, seed=2)
    save_file(sd, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    model = load_dit(tmp_path, cfg, torch.bfloat16, sensitive_fp32=True)
    assert model.img_emb.proj[0].weight.dtype == torch.float32
    assert model.img_emb.proj[1].weight.dtype == torch.bfloat16
    assert model.blocks[1].norm3.weight.dtype == torch.float32
    with torch.no_grad():
        assert torch.isfinite(model(**inputs(cfg, batch=1))).all()


def test_online_quantization_while_loading(tmp_path, t2v):
    cfg, sd = t2v
    save_file(sd, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    model = load_dit(tmp_path, cfg, torch.float32, quant="int8-torch")
    quant = [n for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    assert len(quant) == 2 * 10 and sorted(model.load_report.quantized_online) == sorted(quant)
    assert model.blocks[0].ffn[0].weight.dtype == torch.int8
    assert isinstance(model.text_embedding[0], torch.nn.Linear)  # high precision stays nn.Linear


def test_missing_key_is_named(tmp_path, t2v):
    cfg, sd = t2v
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({k: v for k, v in sd.items() if k != "blocks.1.norm3.bias"}, str(path))
    with pytest.raises(CheckpointError) as err:
        load_dit(path, cfg)
    msg = str(err.value)
    assert "missing 1 tensor(s): blocks.1.norm3.bias" in msg and str(path) in msg


def test_unexpected_key_is_named(tmp_path, t2v):
    cfg, sd = t2v
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({**sd, "blocks.0.cross_attn.k_img.weight": torch.zeros(256, 256)}, str(path))
    with pytest.raises(CheckpointError, match=r"unexpected 1 tensor\(s\): blocks.0.cross_attn.k_img.weight"):
        load_dit(path, cfg)


def test_t2v_file_into_i2v_model_lists_the_image_keys(tmp_path, t2v):
    _, sd = t2v
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError, match=r"missing \d+ tensor\(s\): blocks.0.cross_attn.k_img.bias"):
        load_dit(path, tiny(True, in_dim=16))


def test_wrong_shape_is_named(tmp_path, t2v):
    cfg, sd = t2v
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({**sd, "blocks.1.ffn.0.bias": torch.zeros(384)}, str(path))
    want = r"wrong shape:\n  blocks.1.ffn.0.bias: file has \[384\], model expects \[512\]"
    with pytest.raises(CheckpointError, match=want):
        load_dit(path, cfg)


def test_config_json_of_another_model(tmp_path, t2v):
    cfg, sd = t2v
    save_file(sd, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({**_config_json(cfg), "num_layers": 40, "dim": 5120}))
    with pytest.raises(CheckpointError, match=r"dim: file 5120, config 256; num_layers: file 40, config 2"):
        load_dit(tmp_path, cfg)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel"}))
    with pytest.raises(CheckpointError, match="not the official WanModel"):
        load_dit(tmp_path, cfg)
    _same_weights(load_dit(tmp_path, cfg, torch.float32, check_config=False), sd)


def test_folder_without_official_files(tmp_path):
    (tmp_path / "model.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="holds no official DIT checkpoint.*model.pth"):
        load_dit(tmp_path, tiny())
    with pytest.raises(CheckpointError, match="does not exist"):
        load_dit(tmp_path / "nothing.safetensors", tiny())
