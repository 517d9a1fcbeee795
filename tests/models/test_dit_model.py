"""Structure, key names, precision regions and input errors of the Wan DIT."""

from __future__ import annotations

import fnmatch

import pytest
import torch
from torch import nn

from lightx2v_quant.models.wan import (
    HIGH_PRECISION,
    QUANTIZABLE,
    SENSITIVE_FP32,
    WanDiT,
    WanDiTConfig,
    build_dit,
    random_dit,
)
from lightx2v_quant.models.wan.attention import attention, backends, register_backend
from lightx2v_quant.models.wan.keymap import (
    diffusers_to_official,
    official_state_dict_to_diffusers,
    official_to_diffusers,
)
from tests.models.dit_util import inputs, sqnr_db, tiny


def _matches(name, patterns):
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


@pytest.mark.parametrize("preset, tensors, params", [
    ("wan2.1-t2v-1.3b", 825, 1_418_996_800),
    ("wan2.1-t2v-14b", 1095, 14_288_491_584),
    ("wan2.1-i2v-14b", 1303, 16_394_878_784),
])
def test_released_sizes_have_the_official_key_count(preset, tensors, params):
    sd = build_dit(WanDiTConfig.preset(preset)).state_dict()  # meta: no memory
    assert len(sd) == tensors
    assert sum(t.numel() for t in sd.values()) == params


def test_official_key_names():
    sd = build_dit(tiny(True), torch.float32).state_dict()
    for key, shape in {
        "patch_embedding.weight": (256, 36, 1, 2, 2), "text_embedding.0.weight": (256, 256),
        "text_embedding.2.weight": (256, 256), "time_embedding.0.weight": (256, 256),
        "time_projection.1.weight": (1536, 256), "head.modulation": (1, 2, 256),
        "head.head.weight": (64, 256),
        "blocks.1.modulation": (1, 6, 256), "blocks.1.self_attn.norm_q.weight": (256,),
        "blocks.1.norm3.weight": (256,), "blocks.1.norm3.bias": (256,),
        "blocks.1.cross_attn.k_img.weight": (256, 256),
        "blocks.1.cross_attn.norm_k_img.weight": (256,), "blocks.1.ffn.0.weight": (512, 256),
        "blocks.1.ffn.2.weight": (256, 512), "img_emb.proj.0.weight": (128,),
        "img_emb.proj.1.weight": (128, 128),
        "img_emb.proj.3.weight": (256, 128), "img_emb.proj.4.bias": (256,),
    }.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any("norm1" in k or "norm2" in k or "freqs" in k or "rope" in k for k in sd)


def test_every_weight_is_quantizable_or_high_precision_not_both():
    model = build_dit(tiny(True), torch.float32)
    linears = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv3d))]
    for name in linears:
        assert _matches(name, QUANTIZABLE) != _matches(name, HIGH_PRECISION), name
    for name, p in model.named_parameters():
        owner = name.rpartition(".")[0]
        declared = _matches(owner, QUANTIZABLE) or _matches(owner, HIGH_PRECISION) or _matches(name, HIGH_PRECISION)
        assert declared, name
    assert sum(_matches(n, QUANTIZABLE) for n in linears) == 2 * 12


def test_sensitive_fp32_keeps_the_sensitive_parameters_fp32():
    model = build_dit(tiny(True), torch.bfloat16, sensitive_fp32=True)
    fp32 = {n for n, p in model.named_parameters() if p.dtype == torch.float32}
    assert {"patch_embedding.weight", "text_embedding.0.weight", "time_embedding.2.bias",
            "time_projection.1.weight",
            "blocks.0.modulation", "blocks.0.norm3.weight", "blocks.0.self_attn.norm_q.weight",
            "blocks.1.cross_attn.norm_k_img.weight", "head.head.weight", "head.modulation",
            "img_emb.proj.0.weight", "img_emb.proj.4.bias"} <= fp32
    assert all(_matches(n, SENSITIVE_FP32) for n in fp32)
    bf16 = {n for n, p in model.named_parameters() if p.dtype == torch.bfloat16}
    assert {"blocks.0.self_attn.q.weight", "blocks.0.ffn.0.weight", "img_emb.proj.1.weight"} <= bf16


def test_precision_regions_in_a_bf16_run():
    """Block matmuls in bf16; residual stream, time embedding, head and output in fp32."""
    cfg = tiny()
    model = random_dit(cfg, torch.bfloat16, "cpu", seed=0)
    seen = {}

    def hook(name):
        def fn(module, args, out):
            seen[name] = (args[0].dtype, out.dtype)
        return fn

    model.blocks[0].register_forward_hook(hook("block0"))
    model.blocks[1].register_forward_hook(hook("block1"))
    model.blocks[0].self_attn.q.register_forward_hook(hook("q"))
    model.blocks[0].ffn[2].register_forward_hook(hook("ffn2"))
    model.head.register_forward_hook(hook("head"))
    inp = inputs(cfg, batch=1)
    with torch.no_grad():
        out = model(**inp)
        e, e0 = model.time_embed(inp["t"], 1, 18)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert e.dtype == e0.dtype == torch.float32 and e0.shape == (1, 1, 6, 256)
    assert seen["block0"] == (torch.bfloat16, torch.float32)  # patch embedding bf16; residual fp32 after
    assert seen["block1"] == (torch.float32, torch.float32)
    assert seen["q"] == (torch.bfloat16, torch.bfloat16) and seen["ffn2"] == (torch.bfloat16, torch.bfloat16)
    assert seen["head"][1] == torch.float32


def test_bf16_run_stays_close_to_fp32():
    cfg = tiny(True)
    inp = inputs(cfg)
    with torch.no_grad():
        ref = random_dit(cfg, torch.float32, "cpu", seed=5)(**inp)
        for sensitive in (False, True):
            out = random_dit(cfg, torch.bfloat16, "cpu", seed=5, sensitive_fp32=sensitive)(**inp)
            assert sqnr_db(ref, out) > 40.0, sensitive  # measured ~48 dB (bf16), ~52 dB (sensitive fp32)


@pytest.mark.parametrize("call, match", [
    (lambda m, i: m(i["x"][:, :8], i["t"], i["context"]), r"\[B, 16, F, H, W\]"),
    (lambda m, i: m(i["x"][..., :5], i["t"], i["context"]), "divisible by patch_size"),
    (lambda m, i: m(i["x"], i["t"][:1], i["context"]), "timesteps must be"),
    (lambda m, i: m(i["x"], i["t"], i["context"][..., :100]), "context must be"),
    (lambda m, i: m(i["x"], i["t"], torch.zeros(2, 600, 256)), "context must be"),
    (lambda m, i: m(i["x"], i["t"], [torch.zeros(513, 256)] * 2), r"context\[0\]"),
    (lambda m, i: m(i["x"], i["t"], i["context"], clip_fea=torch.zeros(2, 257, 128)), "no image attention"),
])
def test_bad_inputs_give_one_clear_error(call, match):
    cfg = tiny()
    model = WanDiT(cfg, dtype=torch.float32)
    with pytest.raises(ValueError, match=match):
        call(model, inputs(cfg))


def test_i2v_input_errors():
    cfg = tiny(True)
    model = WanDiT(cfg, dtype=torch.float32)
    inp = inputs(cfg)
    with pytest.raises(ValueError, match="take the conditioning as y"):
        model(inp["x"], inp["t"], inp["context"], clip_fea=inp["clip_fea"])
    with pytest.raises(ValueError, match="pass clip_fea"):
        model(inp["x"], inp["t"], inp["context"], y=inp["y"])


def test_wan22_i2v_expert_takes_y_without_clip():
    cfg = tiny(in_dim=36)  # like Wan2.2 A14B I2V: 36 channels, text-only cross-attention
    model = WanDiT(cfg, dtype=torch.float32)
    inp = inputs(cfg)
    assert "clip_fea" not in inp and "img_emb.proj.0.weight" not in model.state_dict()
    with torch.no_grad():
        assert model(**inp).shape == (2, 16, 3, 4, 6)


def test_attention_backend_registry():
    assert "sdpa" in backends()
    q, k, v = torch.randn(1, 5, 2, 8), torch.randn(1, 7, 2, 8), torch.randn(1, 7, 2, 8)
    want = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) / 8**0.5, -1)
    torch.testing.assert_close(attention(q, k, v), torch.einsum("bhqk,bkhd->bqhd", want, v))
    with pytest.raises(ValueError, match="unknown attention backend 'flash'; backends: sdpa"):
        attention(q, k, v, backend="flash")
    with pytest.raises(ValueError, match="already registered"):
        register_backend("sdpa", lambda q, k, v: q)
    model = WanDiT(tiny(), dtype=torch.float32)
    with pytest.raises(ValueError, match="unknown attention backend"):
        model.attention_backend = "nope"
    with pytest.raises(ValueError, match="unknown attention backend"):
        WanDiT(tiny(), attention_backend="nope")


def test_attention_backend_reaches_every_attention():
    calls = []

    def counting(q, k, v):
        calls.append(q.shape)
        return attention(q, k, v, "sdpa")

    register_backend("counting-test", counting)
    cfg = tiny(True)
    model = WanDiT(cfg, dtype=torch.float32, attention_backend="counting-test")
    with torch.no_grad():
        model(**inputs(cfg))
    assert len(calls) == cfg.num_layers * 3  # self, text cross, image cross


def test_config_validation_and_presets():
    with pytest.raises(ValueError, match="multiple of num_heads"):
        WanDiTConfig(dim=100, num_heads=3)
    with pytest.raises(KeyError, match="Did you mean wan2.1-t2v-14b"):
        WanDiTConfig.preset("wan2.1-t2v-14")
    with pytest.raises(ValueError, match="unknown WanDiTConfig field"):
        WanDiTConfig.from_dict({"dim": 256, "heads": 2})
    assert WanDiTConfig(patch_size=[1, 2, 2]).patch_size == (1, 2, 2)
    assert WanDiTConfig.preset("wan2.1-t2v-14b").head_dim == 128
    for name in ("tiny-t2v", "tiny-i2v"):
        c = WanDiTConfig.preset(name)
        assert all(v % 128 == 0 for v in (c.dim, c.ffn_dim, c.text_dim, c.head_dim, c.image_dim or 128))


def test_keymap_round_trip_and_norm_swap():
    sd = build_dit(tiny(True), torch.float32).state_dict()
    conv = official_state_dict_to_diffusers(sd)
    assert len(conv) == len(sd)
    assert official_to_diffusers("blocks.3.norm3.weight") == "blocks.3.norm2.weight"
    assert diffusers_to_official("blocks.3.norm2.bias") == "blocks.3.norm3.bias"
    assert official_to_diffusers("blocks.12.ffn.0.weight") == "blocks.12.ffn.net.0.proj.weight"
    assert official_to_diffusers("time_projection.1.bias") == "condition_embedder.time_proj.bias"
    assert official_to_diffusers("head.modulation") == "scale_shift_table"
    norm_k_img = "blocks.0.cross_attn.norm_k_img.weight"
    assert official_to_diffusers(norm_k_img) == "blocks.0.attn2.norm_added_k.weight"
    assert diffusers_to_official("blocks.0.attn2.norm_added_q.weight") is None
    for key in sd:
        assert diffusers_to_official(official_to_diffusers(key)) == key
    with pytest.raises(KeyError, match="not a known official"):
        official_to_diffusers("blocks.0.mystery.weight")
    with pytest.raises(KeyError, match="not a known diffusers"):
        diffusers_to_official("blocks.0.norm1.weight")
