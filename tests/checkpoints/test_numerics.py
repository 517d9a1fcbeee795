"""LightX2V's converter numerics: pinned e4m3 bytes for edge values, agreement with independent ports
of qtorch's rounding, math in the source dtype, and device independence."""

from __future__ import annotations

import math

import pytest
import torch

from lightx2v_quant.checkpoints.numerics import (
    checkpoint_quantizer,
    checkpoint_tensors,
    lightx2v_fp8_channel,
    lightx2v_int8_channel,
    qtorch_e4m3_round,
)
from lightx2v_quant.quant import formats as qf
from lightx2v_quant.quant.linear import QuantLinear
from tests.checkpoints.spec import qtorch_numpy, qtorch_scalar, raw, spec_fp8, spec_int8

# (input, qtorch's e4m3 byte, torch's .to(float8_e4m3fn) byte). The qtorch bytes were checked against
# qtorch 0.3.0's own C++ (the version LightX2V installs) built on this machine.
PINNED = [
    (0.0, 0x00, 0x00),
    (-0.0, 0x00, 0x80),  # -0.0 is stored as +0
    (1.0, 0x38, 0x38),
    (1.0625, 0x39, 0x38),  # tie between 1.0 and 1.125: away from zero (torch: to even)
    (-1.0625, 0xB9, 0xB8),
    (1.1875, 0x3A, 0x3A),  # tie whose away-from-zero neighbour is also the even one
    (232.0, 0x77, 0x76),  # tie between 224 and 240
    (-232.0, 0xF7, 0xF6),
    (440.0, 0x7E, 0x7E),
    (448.0, 0x7E, 0x7E),  # saturation value, largest finite e4m3
    (-448.0, 0xFE, 0xFE),
    (2.0**-6, 0x08, 0x08),  # smallest normal
    (2.0**-9, 0x01, 0x01),  # smallest subnormal
    (2.0**-10, 0x01, 0x00),  # subnormal tie with zero: away from zero
    (-(2.0**-10), 0x81, 0x80),
    (3 * 2.0**-10, 0x02, 0x02),
    (2.0**-10 - 2.0**-34, 0x01, 0x00),  # below the tie: the fp32 add of 2^-6 rounds it up first (twice)
    (-(2.0**-20), 0x00, 0x80),  # a negative that rounds to zero is stored as +0
    (2.0**-149, 0x00, 0x00),  # fp32 subnormal input
    (2.0**-7 + 2.0**-10, 0x05, 0x04),  # subnormal-range tie (0x04 + half a step)
]


def _byte(v: float) -> int:
    return int(
        qtorch_e4m3_round(torch.tensor([v], dtype=torch.float32)).to(torch.float8_e4m3fn).view(torch.uint8)
    )


@pytest.mark.parametrize("value,qtorch_byte,torch_byte", PINNED)
def test_pinned_e4m3_bytes(value, qtorch_byte, torch_byte):
    assert _byte(value) == qtorch_byte
    assert int(torch.tensor([value]).to(torch.float8_e4m3fn).view(torch.uint8)) == torch_byte
    assert math.copysign(1, qtorch_scalar(value)) == math.copysign(
        1, float(qtorch_e4m3_round(torch.tensor([value])))
    )


def test_saturation_of_unclipped_values():
    """qtorch keeps exponent 8 with mantissa up to 1.875 (480); the converter clips to 448 first."""
    x = torch.tensor([464.0, 470.0, 1e30, -1e30], dtype=torch.float32)
    assert qtorch_e4m3_round(x).tolist() == [480.0, 480.0, 480.0, -480.0]
    w = torch.tensor([[1.0, 0.5, -1.0]])
    q, _ = lightx2v_fp8_channel(w)
    assert raw(q).tolist() == [0x7E, 0x76, 0xFE]  # 448, 224, -448


def test_rounding_matches_scalar_and_numpy_ports():
    torch.manual_seed(1)
    bits = torch.randint(-(2**31), 2**31 - 1, (200_000,), dtype=torch.int32).view(torch.float32)
    x = torch.cat(
        [
            bits[torch.isfinite(bits)],
            torch.randn(100_000) * 200,
            torch.randn(100_000) * 1e-3,
            (torch.rand(50_000) * 2 - 1) * 2**-5,
        ]
    )
    ours = qtorch_e4m3_round(x).numpy().view("uint32")
    assert (ours == qtorch_numpy(x.numpy()).view("uint32")).all()
    sample = x[::997].tolist()
    assert [qtorch_scalar(v) for v in sample] == qtorch_e4m3_round(torch.tensor(sample)).tolist()


def test_every_grid_midpoint_rounds_away_from_zero():
    grid = torch.arange(0, 0x7F, dtype=torch.uint8).view(torch.float8_e4m3fn).float()  # 0 .. 448
    mids = (grid[1:] + grid[:-1]) / 2
    up = qtorch_e4m3_round(mids)
    assert torch.equal(up, grid[1:]) and torch.equal(qtorch_e4m3_round(-mids), -grid[1:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_per_channel_quantizers_follow_the_spec_in_the_source_dtype(dtype):
    w = (torch.randn(96, 256) * 0.05).to(dtype)
    w[0] = 0  # all-zero row: amax floor 1e-5
    w[1, :5] = -0.0
    w[2] *= 1e-3
    q8, s8 = lightx2v_fp8_channel(w)
    rq8, rs8 = spec_fp8(w)
    assert s8.dtype == dtype and s8.shape == (96, 1)
    assert torch.equal(raw(q8), raw(rq8)) and torch.equal(s8, rs8)
    qi, si = lightx2v_int8_channel(w)
    rqi, rsi = spec_int8(w)
    assert torch.equal(qi, rqi) and torch.equal(si, rsi) and si.dtype == dtype


def test_bf16_source_differs_from_torch_cast_on_some_elements():
    """Why the converter needs qtorch's rounding: torch's cast disagrees on a few % of bf16 elements."""
    w = (torch.randn(256, 512) * 0.02).bfloat16()
    q, s = lightx2v_fp8_channel(w)
    torch_cast = (w / s).clip(-448, 448).float().to(torch.float8_e4m3fn)
    frac = float((raw(q) != raw(torch_cast)).float().mean())
    assert 0.005 < frac < 0.1


def test_rows_are_chunked_without_changing_bytes(monkeypatch):
    from lightx2v_quant.quant import lightx2v_numerics as numerics

    w = torch.randn(64, 128)
    q_full, s_full = lightx2v_fp8_channel(w)
    monkeypatch.setattr(numerics, "_ROWS_PER_CHUNK_ELEMS", 128 * 5)  # 5 rows per chunk, ragged tail
    q_chunk, s_chunk = lightx2v_fp8_channel(w)
    assert torch.equal(raw(q_full), raw(q_chunk)) and torch.equal(s_full, s_chunk)
    qi_chunk, _ = lightx2v_int8_channel(w)
    monkeypatch.undo()
    assert torch.equal(qi_chunk, lightx2v_int8_channel(w)[0])


@pytest.mark.parametrize("fmt", ["w4a16-int4-g128", "w8a8-fp8-block128"])
def test_our_formats_equal_the_formats_reference_on_cpu(fmt):
    w = torch.randn(200, 384)
    ours = checkpoint_tensors(fmt, w)
    ref = qf.FORMATS[fmt].quantize_weight(w)
    assert torch.equal(raw(ours["weight"]), raw(ref["weight"])) and torch.equal(
        ours["weight_scale"], ref["weight_scale"]
    )


def test_bad_weights_are_refused():
    for fmt in qf.FORMATS:
        with pytest.raises(ValueError, match="NaN"):
            checkpoint_tensors(
                fmt,
                torch.randn(2, 128).index_put_(
                    (torch.tensor([1]), torch.tensor([5])), torch.tensor(float("nan"))
                ),
            )
    with pytest.raises(ValueError, match="already quantized"):
        lightx2v_int8_channel(torch.zeros(2, 2, dtype=torch.int8))
    with pytest.raises(ValueError, match="in_features % 128"):
        checkpoint_tensors("w4a16-int4-g128", torch.randn(4, 100))


def test_online_quantizer_gives_fp32_scales_equal_to_the_file_scale():
    w = torch.randn(64, 128).bfloat16()
    layer = QuantLinear(128, 64, False, "fp8-torch", device="meta")
    t = checkpoint_quantizer(layer, w)
    q, s = lightx2v_fp8_channel(w)
    assert t["weight_scale"].dtype == torch.float32 and torch.equal(t["weight_scale"], s.float())
    assert torch.equal(raw(t["weight"]), raw(q))


def test_matches_real_qtorch_when_installed():
    """Opt-in: with qtorch installed (pip install qtorch; it compiles C++ on import) compare directly."""
    quant = pytest.importorskip("qtorch.quant")
    x = torch.cat(
        [torch.randn(100_000) * 100, torch.randn(100_000) * 1e-3, torch.tensor([v for v, _, _ in PINNED])]
    )
    assert torch.equal(
        quant.float_quantize(x, 4, 3, rounding="nearest").view(torch.int32),
        qtorch_e4m3_round(x).view(torch.int32),
    )


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fmt", list(qf.FORMATS))
def test_cuda_gives_the_same_bytes_as_cpu(fmt, dtype):
    w = (torch.randn(512, 1024) * 0.03).to(dtype)
    cpu = checkpoint_tensors(fmt, w)
    gpu = checkpoint_tensors(fmt, w.cuda())
    for name in cpu:
        assert torch.equal(raw(cpu[name]), raw(gpu[name].cpu())), (fmt, name)
