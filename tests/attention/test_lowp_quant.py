"""The low-precision attention's quantization prologue (lowp_quant): split statistics with ragged ends
against float64 torch, and the quantized K / V bytes against an fp32 torch emulation of the kernels'
arithmetic on their own statistics (tests/attention/lowp_quant_cases.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.interp_util import run_cases

pytest.importorskip("triton")


def _check(res: dict[str, float], cuda: bool) -> None:
    shapes = {k.split(":", 1)[1] for k in res}
    assert len(shapes) >= 3
    for s in shapes:
        # fp32 sums in a different order than float64: a few ulp of the mean
        assert res[f"kmean_rel:{s}"] < 1e-6 and res[f"vmean_rel:{s}"] < 1e-6, (s, res)
        assert res[f"kmean_strided_rel:{s}"] < 1e-6, (s, res)
        # min / max are exact in any order, so V's amax follows the mean bit-exactly; the scales are
        # divisions, within 2 ulp of IEEE division (Triton emits div.full.f32; the interpreter also differs)
        ulp2 = 3e-7
        assert res[f"vscale_rel:{s}"] < ulp2 and res[f"vinv_rel:{s}"] < ulp2, (s, res)
        assert res[f"ks_rel:{s}"] < ulp2, (s, res)
        assert res[f"v_stats_repeat:{s}"] == 0.0, (s, res)  # deterministic statistics
        assert res[f"pad_nonzero:{s}"] == 0.0, (s, res)
        assert res[f"v8_key_order_moved:{s}"] == 0.0, (s, res)
        # int8 K: only a tie may round differently (127 / amax is not IEEE-rounded on the GPU)
        assert res[f"k8_mismatch:{s}"] <= (1e-4 if cuda else 0.0) and res[f"k8_maxdiff:{s}"] <= 1, (s, res)
        if cuda:
            assert res[f"v8_mismatch:{s}"] == 0.0, (s, res)
        else:
            # the interpreter rounds fp32 -> fp8 one step low when rounding carries into the exponent
            assert res[f"v8_mismatch:{s}"] < 0.05 and res[f"v8_maxrel:{s}"] <= 1 / 7 + 1e-9, (s, res)


def test_key_order_makes_each_threads_keys_contiguous():
    from lightx2v_quant.attention.lowp_quant import key_order

    pos = key_order(128)
    assert sorted(pos.tolist()) == list(range(128))  # a permutation of the block
    k = torch.arange(128)
    for t in range(4):  # the keys 8g + 2t + e a thread holds in the wgmma accumulator layout
        mine = pos[(k % 8) // 2 == t]
        assert sorted(mine.tolist()) == list(range(32 * t, 32 * t + 32))
    assert key_order(128)[[0, 1, 2, 8, 127]].tolist() == [0, 1, 32, 2, 127]


def test_prologue_in_triton_interpreter():
    _check(run_cases(Path(__file__).with_name("lowp_quant_cases.py")), cuda=False)


@pytest.mark.gpu
def test_prologue_cuda():
    from tests.attention.lowp_quant_cases import SHAPES, prologue_cases

    _check(prologue_cases("cuda", torch.bfloat16, [*SHAPES, (1, 32760, 2, 128)]), cuda=True)
