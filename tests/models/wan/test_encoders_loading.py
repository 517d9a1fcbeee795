"""Loading the official T5 / CLIP .pth layouts (and LightX2V's quantized ones), strict errors, quantization."""

import dataclasses

import pytest
import torch

from lightx2v_quant.checkpoints.numerics import checkpoint_tensors
from lightx2v_quant.checkpoints.reader import CheckpointError
from lightx2v_quant.models.wan import (
    CLIP_QUANTIZABLE,
    CLIP_TINY,
    T5_QUANTIZABLE,
    T5_TINY,
    ByteTokenizer,
    ClipConfig,
    T5Config,
    build_t5,
    load_clip,
    load_t5,
    random_clip,
    random_t5,
)
from lightx2v_quant.models.wan.encoders_loading import CLIP_FILE, T5_FILE
from lightx2v_quant.quant.apply import matches
from lightx2v_quant.quant.linear import QuantLinear


def sqnr_db(x: torch.Tensor, ref: torch.Tensor) -> float:
    ref, x = ref.double(), x.double()
    return float(10 * torch.log10(ref.pow(2).sum() / (x - ref).pow(2).sum()))


def _tokens():
    return ByteTokenizer(48)(["a cat walks on the grass, realistic style", "hello"])


def _t5_file(tmp_path, cfg=T5_TINY, seed=0) -> tuple:
    """An official-layout T5 file (bf16 tensors, official key names) and the state dict written."""
    sd = {k: v.to(torch.bfloat16) for k, v in random_t5(cfg, torch.float32, seed=seed).state_dict().items()}
    path = tmp_path / T5_FILE
    torch.save(sd, path)
    return path, sd


def _clip_file(tmp_path, cfg=CLIP_TINY) -> tuple:
    """An official-layout CLIP file: visual.* plus the text tower and log_scale that Wan does not use."""
    sd = {k: v.to(torch.float16) for k, v in random_clip(cfg, torch.float32, seed=0).state_dict().items()}
    full = {"log_scale": torch.tensor(2.6592), **sd,
            "textual.token_embedding.weight": torch.randn(30, 16), "textual.blocks.0.attn.q.weight": torch.randn(16, 16),
            "textual.head.0.weight": torch.randn(16, 16)}
    path = tmp_path / CLIP_FILE
    torch.save(full, path)
    return path, sd


def test_official_t5_file_loads_strictly_in_the_run_dtype(tmp_path):
    path, sd = _t5_file(tmp_path)
    model = load_t5(path, T5_TINY, dtype="fp32")
    assert model.blocks[1].ffn.gate[0].weight.dtype == torch.float32
    assert torch.equal(model.blocks[1].pos_embedding.embedding.weight, sd["blocks.1.pos_embedding.embedding.weight"].float())
    assert model.load_report.tensors == len(sd) and not model.load_report.quantized_online
    ref = random_t5(T5_TINY, torch.float32, seed=0)
    ref.load_state_dict({k: v.float() for k, v in sd.items()})  # the bf16-rounded weights
    with torch.no_grad():
        torch.testing.assert_close(model(*_tokens()), ref(*_tokens()), rtol=0, atol=0)
    bf = load_t5(path, T5_TINY, dtype=torch.bfloat16)
    assert bf.token_embedding.weight.dtype == torch.bfloat16 and not any(p.is_meta for p in bf.parameters())


def test_official_clip_file_drops_text_tower_and_log_scale(tmp_path):
    path, sd = _clip_file(tmp_path)
    model = load_clip(path, CLIP_TINY)  # fp16 default, as the official clip_dtype
    assert model.dtype == torch.float16
    assert set(model.state_dict()) == set(sd)
    assert torch.equal(model.visual.head, sd["visual.head"])
    img = torch.rand(3, 1, 60, 80) * 2 - 1
    assert model.encode(img).shape == (1, CLIP_TINY.num_tokens, CLIP_TINY.width)


def test_t5_missing_extra_and_wrong_shape_keys_are_named(tmp_path):
    path, sd = _t5_file(tmp_path)
    bad = dict(sd)
    del bad["blocks.1.ffn.fc1.weight"]
    bad["blocks.0.attn.extra.weight"] = torch.zeros(4, 4)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        load_t5(tmp_path / "bad.pth", T5_TINY)
    msg = str(err.value)
    assert "bad.pth" in msg and "missing 1 tensor(s): blocks.1.ffn.fc1.weight" in msg
    assert "unexpected 1 tensor(s): blocks.0.attn.extra.weight" in msg
    with pytest.raises(CheckpointError, match=r"blocks.0.ffn.fc1.weight: file has \[512, 256\], model expects \[640, 256\]"):
        load_t5(path, dataclasses.replace(T5_TINY, dim_ffn=640))
    with pytest.raises(CheckpointError, match=r"missing 10 tensor\(s\): blocks.2.attn"):
        load_t5(path, dataclasses.replace(T5_TINY, num_layers=3))


def test_clip_post_norm_and_head_are_still_checked(tmp_path):
    _, sd = _clip_file(tmp_path)
    bad = {k: v for k, v in sd.items() if k != "visual.head"}
    torch.save(bad, tmp_path / "nohead.pth")
    with pytest.raises(CheckpointError, match=r"missing 1 tensor\(s\): visual.head"):
        load_clip(tmp_path / "nohead.pth", CLIP_TINY)
    torch.save({**sd, "visual.proj_extra": torch.zeros(2)}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"unexpected 1 tensor\(s\): visual.proj_extra"):
        load_clip(tmp_path / "extra.pth", CLIP_TINY)
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_clip(tmp_path / CLIP_FILE, dataclasses.replace(CLIP_TINY, mlp_dim=256))


@pytest.mark.parametrize("scheme,min_db", [("int8-torch", 28.0), ("fp8-torch", 20.0)])
def test_t5_quantized_online_stays_close(tmp_path, scheme, min_db):
    path, _ = _t5_file(tmp_path)
    ref = load_t5(path, T5_TINY, dtype="fp32")
    model = load_t5(path, T5_TINY, dtype="fp32", quant=scheme)
    qnames = [n for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    assert len(qnames) == 7 * T5_TINY.num_layers and all(matches(n, T5_QUANTIZABLE) for n in qnames)
    assert sorted(model.load_report.quantized_online) == sorted(qnames)
    with torch.no_grad():
        assert sqnr_db(model(*_tokens()), ref(*_tokens())) > min_db


@pytest.mark.parametrize("scheme,min_db", [("int8-torch", 30.0), ("fp8-torch", 20.0)])
def test_clip_quantized_online_stays_close(scheme, min_db):
    ref = random_clip(CLIP_TINY, torch.float32, seed=4)
    model = random_clip(CLIP_TINY, torch.float32, seed=4, quant=scheme)  # same weights, quantized
    qnames = [n for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    assert len(qnames) == 4 * CLIP_TINY.num_layers and all(matches(n, CLIP_QUANTIZABLE) for n in qnames)
    img = torch.rand(2, 3, 1, 70, 70) * 2 - 1
    assert sqnr_db(model.encode(list(img)), ref.encode(list(img))) > min_db


def test_lightx2v_prequantized_t5_file_loads(tmp_path):
    """LightX2V's int8 T5 .pth: quantized linears as int8 weight + bf16 weight_scale [N, 1] (its converter
    computes in the bf16 source dtype: checkpoint_tensors reproduces it byte for byte)."""
    path, sd = _t5_file(tmp_path)
    qsd = {}
    for key, t in sd.items():
        if key.endswith(".weight") and matches(key[: -len(".weight")], T5_QUANTIZABLE):
            q = checkpoint_tensors("w8a8-int8-channel", t)
            assert q["weight_scale"].dtype == torch.bfloat16
            qsd[key], qsd[key + "_scale"] = q["weight"], q["weight_scale"]
        else:
            qsd[key] = t
    qpath = tmp_path / "models_t5_umt5-xxl-enc-int8.pth"
    torch.save(qsd, qpath)
    model = load_t5(qpath, T5_TINY, dtype="fp32", quant="int8-torch")
    assert len(model.load_report.prequantized) == 7 * T5_TINY.num_layers and not model.load_report.quantized_online
    for name in model.load_report.prequantized:  # the file's tensors, scales widened to fp32
        layer = model.get_submodule(name)
        assert torch.equal(layer.weight, qsd[f"{name}.weight"])
        assert layer.weight_scale.dtype == torch.float32
        assert torch.equal(layer.weight_scale, qsd[f"{name}.weight_scale"].float())
    online = load_t5(path, T5_TINY, dtype="fp32", quant="int8-torch")
    online_layer = online.blocks[1].ffn.fc2
    assert torch.equal(online_layer.weight, model.blocks[1].ffn.fc2.weight)  # online == LightX2V's converter
    assert torch.equal(online_layer.weight_scale, model.blocks[1].ffn.fc2.weight_scale)
    with torch.no_grad():
        assert sqnr_db(model(*_tokens()), online(*_tokens())) > 30.0
    with pytest.raises(CheckpointError, match="the file is quantized"):
        load_t5(qpath, T5_TINY, dtype="fp32")
    with pytest.raises(CheckpointError, match=r"holds w8a8-int8-channel weights .* needs w8a8-fp8-channel"):
        load_t5(qpath, T5_TINY, dtype="fp32", quant="fp8-torch")


def test_random_models_are_seeded_and_built_like_loaded_ones():
    a, b = random_t5(T5_TINY, "fp32", seed=5), random_t5(T5_TINY, "fp32", seed=5)
    c = random_t5(T5_TINY, "fp32", seed=6)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(a.blocks[0].attn.q.weight, c.blocks[0].attn.q.weight)
    assert a.load_report.source == "seeded random weights (seed 5)"
    assert not any(p.requires_grad for p in a.parameters()) and not a.training


def test_build_is_on_meta_in_the_run_dtype():
    model = build_t5(T5Config(), "bf16", quant="fp8-torch")  # full umT5-XXL: costs nothing on meta
    assert all(t.is_meta for t in model.state_dict().values())
    assert model.token_embedding.weight.dtype == torch.bfloat16
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 7 * 24
    n = sum(t.numel() for k, t in build_t5(T5Config()).state_dict().items())
    assert n == 5_680_910_336  # the official file's parameter count
    from lightx2v_quant.models.wan import build_clip

    visual = sum(t.numel() for t in build_clip(ClipConfig()).state_dict().values())
    assert visual == 632_076_800  # the official visual.* parameter count
    with pytest.raises(ValueError, match="must be resolved"):
        build_t5(T5_TINY, quant="auto")


def test_config_schema_matches_the_model_configs():
    from omegaconf import OmegaConf

    from lightx2v_quant.config import ClipArch, T5Arch

    for arch, model_cfg in ((T5Arch, T5Config), (ClipArch, ClipConfig)):
        assert [(f.name, f.default) for f in dataclasses.fields(arch)] == \
            [(f.name, f.default) for f in dataclasses.fields(model_cfg)]
    tiny = OmegaConf.merge(OmegaConf.structured(T5Arch), OmegaConf.load("conf/model/tiny-t2v.yaml").t5)
    assert T5Config.from_mapping(tiny) == T5_TINY
    assert OmegaConf.load("conf/model/tiny-t2v.yaml").dit.text_dim == T5_TINY.dim


def test_validation_sees_the_encoder_linear_shapes():
    from omegaconf import OmegaConf

    from lightx2v_quant.config import RunConfig
    from lightx2v_quant.validate import linear_shapes

    cfg = OmegaConf.structured(RunConfig)
    assert linear_shapes(cfg, "t5") == {(4096, 4096), (10240, 4096), (4096, 10240)}
    assert linear_shapes(cfg, "clip") == {(3840, 1280), (1280, 1280), (5120, 1280), (1280, 5120)}
    model = build_t5(T5Config(dim_attn=2048, num_heads=32))
    real = {(m.out_features, m.in_features) for n, m in model.named_modules() if matches(n, T5_QUANTIZABLE)}
    assert real == T5Config(dim_attn=2048, num_heads=32).linear_shapes()
    from lightx2v_quant.models.wan import build_clip

    clip = build_clip(CLIP_TINY)
    real = {(m.out_features, m.in_features) for n, m in clip.named_modules() if matches(n, CLIP_QUANTIZABLE)}
    assert real == CLIP_TINY.linear_shapes()
