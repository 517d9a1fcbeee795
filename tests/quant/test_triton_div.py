"""The division-free quotient of the Triton quantizers (``triton_quant._div_by_scale``), replayed on CPU.

On the GPU the quantizers compute RN(x / s) as y = x * r, then two FMA corrections, with r = RN(1 / s).
Here the same sequence runs in NumPy with exactly rounded fp32 FMAs (products and sums formed exactly in
float64 pairs, then rounded once to fp32) and is compared with IEEE fp32 division. Quotient and scale are
invariant under scaling x and amax by the same power of two, so one binade of amax with every bf16 / fp16
mantissa of x, over the exponent range that can reach the fp8 / int8 grids, covers all 16-bit inputs
(one correction step); fp32 inputs (two steps, exact by Markstein's theorem) are sampled.
"""

from __future__ import annotations

import numpy as np
import pytest

F32 = np.float32


def _two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _round_to_f32(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """RN32(hi + lo) for a float64 pair with |lo| <= ulp64(hi) / 2 (exact, no double rounding)."""
    r = hi.astype(F32)
    up = np.nextafter(r, F32(np.inf))
    down = np.nextafter(r, F32(-np.inf))
    mid_up = (r.astype(np.float64) + up.astype(np.float64)) / 2
    mid_down = (r.astype(np.float64) + down.astype(np.float64)) / 2
    # hi on a midpoint: the float64 rounding may have moved an off-midpoint value onto it; lo says where
    r = np.where((hi == mid_up) & (lo > 0), up, r)
    r = np.where((hi == mid_down) & (lo < 0), down, r)
    return r


def fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Exactly rounded fp32 fused multiply-add (a * b is exact in float64: 24 + 24 bits)."""
    p = a.astype(np.float64) * b.astype(np.float64)
    hi, lo = _two_sum(p, c.astype(np.float64))
    return _round_to_f32(hi, lo)


def div_by_scale(x: np.ndarray, s: np.ndarray, r: np.ndarray, second_step: bool) -> np.ndarray:
    """The GPU sequence, step by step (see triton_quant._div_by_scale)."""
    y = (x.astype(np.float64) * r.astype(np.float64)).astype(F32)  # RN32 of an exact product
    y = fma32(fma32(-s, y, x), r, y)
    if second_step:
        y = fma32(fma32(-s, y, x), r, y)
    # the kernel gives a zero quotient the sign of x (x = -0.0 comes out of the FMAs as +0.0)
    return np.where(y == 0, np.copysign(y, x), y).astype(F32)


def _check(x: np.ndarray, amax: np.ndarray, qmax: float, second_step: bool) -> None:
    s = np.maximum(amax, F32(1e-8)) / F32(qmax)  # IEEE fp32 division (as the reference)
    r = F32(1.0) / s
    assert s.dtype == F32 and r.dtype == F32
    want = x / s
    got = div_by_scale(x, s, r, second_step)
    bad = got.view(np.uint32) != want.view(np.uint32)  # bits: signed zeros must match too
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        pytest.fail(f"x={x[i]!r} s={s[i]!r}: got {got[i]!r}, IEEE {want[i]!r} ({int(bad.sum())} mismatches)")


def _sixteen_bit_values(kind: str) -> np.ndarray:
    """Every positive finite bf16 / fp16 value, as fp32."""
    if kind == "bf16":
        bits = np.arange(1, 0x7F80, dtype=np.uint32) << 16
        return bits.view(F32)
    return np.arange(1, 0x7C00, dtype=np.uint16).view(np.float16).astype(F32)


@pytest.mark.parametrize("kind", ["bf16", "fp16"])
@pytest.mark.parametrize("qmax", [448.0, 127.0])
def test_every_16_bit_input_of_one_amax_binade(kind, qmax):
    """16-bit inputs take one correction step (the kernel's path for bf16 / fp16)."""
    values = _sixteen_bit_values(kind)
    # amax: every value in [1, 2); x: every value at or below amax down to amax * 2^-40 (smaller
    # quotients are below 2^-30 and round to zero in fp8 and int8), both signs.
    amaxes = values[(values >= 1) & (values < 2)]
    xs = values[(values >= F32(2.0**-40)) & (values < 2)]
    for chunk in np.array_split(amaxes, max(1, len(amaxes) // 32)):  # bounded memory
        a, x = np.meshgrid(chunk, xs, indexing="ij")
        keep = x <= a
        a, x = a[keep], x[keep]
        _check(np.concatenate([x, -x]), np.concatenate([a, a]), qmax, second_step=False)


@pytest.mark.parametrize("qmax", [448.0, 127.0])
@pytest.mark.parametrize("second_step", [True, False])
def test_sampled_fp32_inputs_and_extreme_scales(qmax, second_step):
    """fp32 inputs take two steps (proven exact); the one-step variant is sampled too, for the record."""
    rng = np.random.default_rng(0)
    n = 2_000_000
    amax = np.exp2(rng.uniform(-60, 120, n)).astype(F32) * rng.uniform(1, 2, n).astype(F32)
    frac = np.exp2(-rng.uniform(0, 30, n)) * rng.uniform(0.5, 1, n)
    x = (amax * frac.astype(F32)).astype(F32) * rng.choice(np.array([-1, 1], dtype=F32), n)
    x = np.minimum(np.abs(x), amax) * np.sign(x)
    _check(x.astype(F32), amax, qmax, second_step)
    # the floor on amax, and the largest finite inputs
    tiny = np.full(1000, F32(1e-9))
    _check(tiny * rng.uniform(-1, 1, 1000).astype(F32), tiny, qmax, second_step)
    big = np.full(1000, np.finfo(F32).max)
    _check(big * rng.uniform(-1, 1, 1000).astype(F32), big, qmax, second_step)
    zeros = np.array([0.0, -0.0, 1e-45, -1e-45], dtype=F32)  # signed zeros and the smallest subnormals
    _check(zeros, np.full(4, F32(3.0)), qmax, second_step)


def test_exact_fma_emulation():
    # a case where a float64 sum lands on an fp32 midpoint and the low part decides
    a, b = F32(1.0), F32(1.0)
    c = F32(2.0**-24)  # 1 + 2^-24 is the midpoint between 1 and 1 + 2^-23: ties to even -> 1
    assert fma32(np.array([a]), np.array([b]), np.array([c]))[0] == F32(1.0)
    c2 = np.array([F32(2.0**-24 + 2.0**-47)])  # just above the midpoint -> rounds up
    assert fma32(np.array([a]), np.array([b]), c2)[0] == np.nextafter(F32(1.0), F32(2.0))
