"""On a CUDA GPU: every offload mode gives bit-identical outputs to no offload (same kernels, same inputs), on
a toy model whose blocks mix int8 / fp8 / int4 / bf16 / fp32 tensors, with the real CUDA transport."""

import copy

import pytest
import torch

from lightx2v_quant.config import OffloadConfig
from lightx2v_quant.offload.disk import save_by_block
from lightx2v_quant.offload.encoders import OnDemand
from lightx2v_quant.offload.manager import wrap_for_offload
from tests.offload.toy import metaize, toy_inputs, toy_model

pytestmark = pytest.mark.gpu
SEEDS = (1, 2, 3)
CASES = [("model", "block"), ("block", "block"), ("phase", "phase"), ("disk", "block"), ("disk", "phase")]


def cuda_inputs(seed):
    return tuple(t.cuda() for t in toy_inputs(seed))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    model = toy_model(layers=5)
    folder = tmp_path_factory.mktemp("toy_blocks")
    save_by_block(model, folder)
    ref = copy.deepcopy(model).cuda()
    with torch.no_grad():
        outs = [ref(*cuda_inputs(s)) for s in SEEDS]
    torch.cuda.synchronize()
    return model, folder, outs


@pytest.mark.parametrize("mode,granularity", CASES)
@pytest.mark.parametrize("slots", [2, 3])
def test_offload_is_bit_identical_on_cuda(toy, mode, granularity, slots):
    model, folder, expected = toy
    m = metaize(model) if mode == "disk" else copy.deepcopy(model)
    cfg = OffloadConfig(mode=mode, granularity=granularity, slots=slots, num_disk_workers=2, host_buffers=3)
    handle = wrap_for_offload(m, cfg, "cuda", checkpoint=str(folder) if mode == "disk" else None)
    if mode != "disk":
        assert all(u.host.is_pinned() for u in handle.units)
    for _ in range(2):  # two sampling loops: begin/end are repeatable
        with torch.no_grad(), handle:
            outs = [m(*cuda_inputs(s)) for s in SEEDS]
        for out, exp in zip(outs, expected):
            assert torch.equal(out, exp)
    stats = handle.stats()
    assert stats["restarts"] == 0 and stats["transfer_wait_ms"] >= 0 and stats["peak_gpu_bytes"] > 0
    if mode != "model":
        assert stats["forwards"] == 2 * len(SEEDS)
        assert stats["copy_ms"] > 0
    assert torch.cuda.memory_allocated() < 64 * 2**20  # end() released the device copies
    handle.close()


def test_on_demand_encoder_on_cuda():
    model = toy_model(layers=2)
    ref = copy.deepcopy(model).cuda()
    x = cuda_inputs(1)
    od = OnDemand(model, "cuda")
    with torch.no_grad():
        expected = ref(*x)
        with od as m:
            out = m(*x)
    assert torch.equal(out, expected)
    assert model.blocks[0].self_attn.q.weight.device.type == "cpu"
    od.close()


MID_DIT = dict(dim=512, ffn_dim=1024, num_heads=4, num_layers=4, text_dim=256, text_len=64)


@pytest.mark.parametrize("size", ["tiny-t2v", "mid"])
@pytest.mark.parametrize("scheme,sensitive", [("int8-torch", False), ("fp8-torch", True), (None, False)])
def test_wan_dit_offload_is_bit_identical_on_cuda(tmp_path, size, scheme, sensitive):
    from lightx2v_quant.models.wan import WanDiTConfig, random_dit

    cfg = WanDiTConfig(**MID_DIT) if size == "mid" else WanDiTConfig.preset(size)
    model = random_dit(cfg, torch.bfloat16, "cpu", seed=5, quant=scheme, sensitive_fp32=sensitive)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, cfg.in_dim, 3, 16, 16, generator=g).cuda()
    ctx = torch.randn(1, 20, cfg.text_dim, generator=g).cuda()
    t = torch.tensor([650.0], device="cuda")
    ref = copy.deepcopy(model).cuda()
    with torch.no_grad():
        expected = ref(x, t, ctx)
    del ref
    save_by_block(model, tmp_path)
    for mode, gran in CASES:
        m = metaize(model) if mode == "disk" else copy.deepcopy(model)
        handle = wrap_for_offload(m, OffloadConfig(mode=mode, granularity=gran, num_disk_workers=2), "cuda",
                                  checkpoint=str(tmp_path) if mode == "disk" else None)
        with torch.no_grad(), handle:
            outs = [m(x, t, ctx) for _ in range(2)]
        assert all(torch.equal(o, expected) for o in outs), f"{mode}/{gran} differs from no offload"
        assert handle.stats()["restarts"] == 0
        handle.close()
