"""Offload on the real Wan DIT (CPU, fake transport): identical outputs for every mode and scheme, and the
memory estimate equals the bytes of the built model."""

import copy

import pytest
import torch

from lightx2v_quant.config import OffloadConfig
from lightx2v_quant.models.wan import WanDiTConfig, build_dit, random_dit
from lightx2v_quant.offload import memory as mem
from lightx2v_quant.offload.disk import save_by_block
from lightx2v_quant.offload.manager import wrap_for_offload
from lightx2v_quant.quant.apply import weight_bytes
from lightx2v_quant.quant.schemes import get_scheme
from tests.offload.fakes import FakeTransport, check_schedule
from tests.offload.toy import metaize

MID = WanDiTConfig(dim=512, ffn_dim=1024, num_heads=4, num_layers=3, text_dim=256, text_len=64)


def dit_inputs(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, cfg.in_dim, 2, 8, 8, generator=g)
    ctx = torch.randn(1, 12, cfg.text_dim, generator=g)
    extra = {}
    if cfg.image_dim is not None:
        extra["clip_fea"] = torch.randn(1, 257, cfg.image_dim, generator=g)
    return (x, torch.tensor([700.0]), ctx), extra


@pytest.mark.parametrize("cfg_name,scheme,dtype,sensitive", [
    ("tiny-t2v", "int8-torch", torch.float32, False),
    ("tiny-i2v", "fp8-torch", torch.bfloat16, True),
    ("mid", None, torch.bfloat16, False),
    ("mid", "int8-torch", torch.bfloat16, True),
])
def test_every_mode_matches_no_offload(cfg_name, scheme, dtype, sensitive, tmp_path):
    cfg = MID if cfg_name == "mid" else WanDiTConfig.preset(cfg_name)
    model = random_dit(cfg, dtype, "cpu", seed=3, quant=scheme, sensitive_fp32=sensitive)
    args, kw = dit_inputs(cfg)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        expected = ref(*args, **kw)
    save_by_block(model, tmp_path)
    for mode, gran in [("model", "block"), ("block", "block"), ("phase", "phase"), ("disk", "phase")]:
        m = metaize(model) if mode == "disk" else copy.deepcopy(model)
        t = FakeTransport(lazy=True)
        handle = wrap_for_offload(m, OffloadConfig(mode=mode, granularity=gran, num_disk_workers=2), "cpu",
                                  transport=t, checkpoint=str(tmp_path) if mode == "disk" else None)
        with torch.no_grad(), handle:
            outs = [m(*args, **kw) for _ in range(2)]
        assert all(torch.equal(o, expected) for o in outs), f"{mode} differs"
        check_schedule(t)
        handle.close()


@pytest.mark.parametrize("preset", ["wan2.1-t2v-14b", "wan2.1-i2v-14b", "wan2.1-t2v-1.3b"])
@pytest.mark.parametrize("scheme", [None, "fp8-torch", "int4-g128-torch"])
@pytest.mark.parametrize("sensitive", [False, True])
def test_estimate_equals_the_built_model(preset, scheme, sensitive):
    cfg = WanDiTConfig.preset(preset)
    model = build_dit(cfg, torch.bfloat16, "meta", quant=scheme, sensitive_fp32=sensitive)
    s = get_scheme(scheme) if scheme else None
    est = mem.dit_bytes(cfg, s, "bf16", sensitive, i2v=cfg.image_dim is not None)
    assert est.blocks[0] == weight_bytes(model.blocks[0])
    assert est.total == weight_bytes(model)
    b = model.blocks[0]
    phase_bytes = [weight_bytes(b.self_attn) + b.modulation.numel() * b.modulation.element_size(),
                   weight_bytes(b.norm3) + weight_bytes(b.cross_attn), weight_bytes(b.ffn)]
    assert est.phases == phase_bytes


@pytest.mark.parametrize("scheme", [None, "fp8-torch", "int4-g128-torch"])
def test_encoder_estimates_equal_the_built_encoders(scheme):
    from lightx2v_quant.models.wan.clip import ClipConfig
    from lightx2v_quant.models.wan.encoders_loading import build_clip, build_t5
    from lightx2v_quant.models.wan.t5 import T5Config

    s = get_scheme(scheme) if scheme else None
    assert mem.t5_bytes(T5Config(), s, "bf16") == weight_bytes(build_t5(T5Config(), torch.bfloat16, scheme))
    assert mem.clip_bytes(ClipConfig(), s) == weight_bytes(build_clip(ClipConfig(), torch.float16, scheme))
