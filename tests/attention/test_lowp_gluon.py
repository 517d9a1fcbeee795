"""The Gluon ping-pong attention kernel (lowp_gluon): builds for sm_90 without a GPU (Gluon has no CPU
interpreter) with the schedule it exists for; on a Hopper GPU, the same output as the Triton kernel."""

from __future__ import annotations

import re

import pytest
import torch

triton = pytest.importorskip("triton")


@pytest.mark.parametrize("pingpong,num_wg,head_dim", [(True, 2, 128), (True, 3, 128), (False, 3, 128), (True, 3, 64)])
def test_gluon_attention_builds_for_hopper(monkeypatch, pingpong, num_wg, head_dim):
    """Warp-specialized (a producer warp with few registers, consumer warpgroups with the rest), both
    8-bit wgmmas with P.V's A operand (P) read from shared memory after an async-proxy fence (P stored
    four keys per 32-bit word, 16 bytes per store, thanks to V^T's key order), fits the
    shared memory of an H100, O's rescale behind a warp vote and a uniform branch, and with ``pingpong``
    the consumers' turn barriers (named barriers 8, 9, 10 for warpgroups 0, 1, 2; 256 threads each)
    around the wgmma issue."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if "nvidia" not in triton.backends.backends:
        pytest.skip("this Triton has no NVIDIA backend")
    from triton.backends.compiler import GPUTarget

    from lightx2v_quant.attention import lowp_gluon

    if not lowp_gluon.AVAILABLE:
        pytest.skip("this Triton has no Gluon")
    src = lowp_gluon.ast_source(pingpong=pingpong, num_wg=num_wg, head_dim=head_dim)
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": lowp_gluon.NUM_WARPS})
    ptx = kernel.asm["ptx"]
    assert kernel.metadata.shared <= 232448
    assert "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8" in ptx
    pv = rf"wgmma\.mma_async\.sync\.aligned\.m64n{head_dim}k32\.f32\.e4m3\.e4m3\s+\{{[^}}]*\}},\s*(\S+),"
    fp8_mma = re.findall(pv, ptx)
    assert fp8_mma and all(not a.startswith("{") for a in fp8_mma)  # A is a shared-memory descriptor
    assert "fence.proxy.async.shared::cta" in ptx
    assert re.search(r"st\.shared\.v4\.b32", ptx) and not re.search(r"st\.shared\.(?:b16|u16)", ptx)
    # the rescale: one vote and one uniform branch over the thread's 64 x D / 128 accumulator registers
    assert "vote.sync.any.pred" in ptx and re.search(r"@!%p\d+ bra\.uni SKIP_\d+;", ptx)
    regs = {int(r) for r in re.findall(r"setmaxnreg\.(?:inc|dec)\.sync\.aligned\.u32\s+(\d+);", ptx)}
    assert lowp_gluon.PRODUCER_REGS in regs and lowp_gluon.consumer_regs(num_wg) in regs
    ids = range(8, 8 + num_wg)
    turns = {f"bar.{op} {i}, 256" for op in ("sync", "arrive") for i in range(8, 11) if f"bar.{op} {i}, 256" in ptx}
    assert turns == ({f"bar.{op} {i}, 256" for op in ("sync", "arrive") for i in ids} if pingpong else set())


def _pinned_triton(qq, lq, lk, heads):
    from lightx2v_quant.attention import lowp_triton

    # the Triton kernel with 128-key blocks, as the Gluon kernel: the same online-softmax steps
    return lowp_triton._launch(qq, None, lq, lk, heads, torch.bfloat16, (64, 128, 4, 2, 168))


@pytest.mark.gpu
@pytest.mark.parametrize(
    "b,lq,lk,heads,data",
    [
        (1, 4096, 4096, 4, "randn"),
        (1, 1000, 300, 2, "randn"),
        (2, 77, 513, 3, "randn"),
        (1, 129, 128, 1, "randn"),
        (1, 4100, 640, 2, "randn"),
        (1, 1000, 4100, 2, "ramp"),  # the row max grows block after block: O's rescale runs, skipped or not
        (1, 2000, 2000, 2, "peaky"),  # large logits: maxima found early, most rescales skipped
        # persistent programs with many tiles each: the K / V ring's slots and phases and the two Q buffers
        # run on across tiles of 1, 2, 3 and 6 key blocks (ragged or not)
        (2, 4100, 700, 40, "randn"),
        (1, 8000, 100, 16, "randn"),
        (1, 6000, 256, 24, "ramp"),
        (1, 3000, 384, 8, "peaky"),
    ],
)
def test_gpu_gluon_attention_matches_triton_kernel(b, lq, lk, heads, data):
    from lightx2v_quant.attention import lowp_gluon, lowp_quant, lowp_triton

    if not lowp_gluon.supported(torch.device("cuda"), 128):
        pytest.skip("needs a Hopper GPU and a Triton with Gluon")
    gen = torch.Generator("cuda").manual_seed(0)
    q = torch.randn(b, lq, heads, 128, device="cuda", generator=gen, dtype=torch.bfloat16)
    k, v = (torch.randn(b, lk, heads, 128, device="cuda", generator=gen, dtype=torch.bfloat16) for _ in range(2))
    if data == "ramp":
        k = (k * torch.linspace(0.2, 3.0, lk, device="cuda")[None, :, None, None]).to(k.dtype)
    elif data == "peaky":
        q = q * 4
    sm_scale = 128**-0.5 * lowp_triton.LOG2E
    qq = lowp_quant.quantize_qkv(q, k, v, sm_scale=sm_scale, pv_fp8=True, key_order=True)
    ref = _pinned_triton(qq, lq, lk, heads)  # the Triton kernel, summing P.V in V^T's key order too
    first = None
    for pingpong, num_wg, programs in ((True, 2, None), (True, 3, None), (False, 3, None), (True, 3, 5), (True, 2, 3)):
        out = lowp_gluon.launch(qq, lq, lk, heads, torch.bfloat16, pingpong=pingpong, num_wg=num_wg, programs=programs)
        assert out.shape == ref.shape and torch.isfinite(out).all()
        # the same P, the same P.V order; only the fp32 row sums of P may add their parts in another order
        # (the Gluon kernel keeps four parts per row, _quad_sums): at most one bf16 step apart
        torch.testing.assert_close(out, ref, rtol=2**-7, atol=1e-5)
        assert ((out.float() - ref.float()).norm() / ref.float().norm()).item() < 1e-4
        # the schedules (turns or not, two or three warpgroups, how many tiles each program takes) change
        # nothing in the arithmetic
        first = out if first is None else first
        torch.testing.assert_close(out, first, rtol=0, atol=0)
    # against keys in their natural order: the same P and V, summed in another order by the tensor cores
    natural = lowp_quant.quantize_qkv(q, k, v, sm_scale=sm_scale, pv_fp8=True)
    torch.testing.assert_close(_pinned_triton(natural, lq, lk, heads).float(), ref.float(), rtol=2e-2, atol=2e-2)
    with pytest.raises(ValueError, match="key_order"):
        lowp_gluon.launch(natural, lq, lk, heads, torch.bfloat16)


@pytest.mark.gpu
def test_gpu_dispatch_takes_gluon_kernel_on_hopper(monkeypatch):
    from lightx2v_quant.attention import lowp_gluon, lowp_quant, lowp_triton

    if not lowp_gluon.supported(torch.device("cuda"), 128):
        pytest.skip("needs a Hopper GPU and a Triton with Gluon")
    cuda = torch.device("cuda")
    assert lowp_triton.use_gluon(cuda, 128, 32760)
    assert not lowp_triton.use_gluon(cuda, 64, 32760)
    assert not lowp_triton.use_gluon(cuda, 128, 512)  # cross-attention: the Triton kernel is faster there
    # the DIT's stages: V^T is stored in the Gluon kernel's key order exactly when that kernel runs
    gen = torch.Generator("cuda").manual_seed(0)
    for lk, gluon in ((4224, True), (512, False)):
        q, k, v = (torch.randn(1, n, 2, 128, device="cuda", generator=gen, dtype=torch.bfloat16) for n in (300, lk, lk))
        vq = lowp_triton.quantize_v(v)
        out = lowp_triton.attend(lowp_triton.quantize_q(q), lowp_triton.quantize_k(k), vq, 300, lk, 2, q.dtype)
        qq = lowp_quant.quantize_qkv(q, k, v, sm_scale=128**-0.5 * lowp_triton.LOG2E, key_order=gluon)
        assert torch.equal(vq[0].view(torch.uint8), qq.v.view(torch.uint8))
        want = lowp_gluon.launch(qq, 300, lk, 2, q.dtype) if gluon else lowp_triton._launch(qq, None, 300, lk, 2, q.dtype)
        torch.testing.assert_close(out, want, rtol=0, atol=0)
    monkeypatch.setenv("LIGHTX2V_QUANT_ATTN_KERNEL", "triton")
    assert not lowp_triton.use_gluon(cuda, 128, 32760)
