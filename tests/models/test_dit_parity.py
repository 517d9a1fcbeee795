"""Our Wan DIT against diffusers' WanTransformer3DModel and against direct re-statements of the official
code (sinusoid, RoPE), on tiny random weights in fp32."""

from __future__ import annotations

import math

import pytest
import torch

from lightx2v_quant.models.wan import WanDiT
from lightx2v_quant.models.wan import dit as dit_module
from lightx2v_quant.models.wan.keymap import diffusers_state_dict_to_official
from lightx2v_quant.models.wan.rope import apply_rope, rope_bands, rope_tables
from tests.models.dit_util import diffusers_reference, inputs, rel_err, tiny


def _pair(i2v: bool):
    cfg = tiny(i2v)
    ref = diffusers_reference(cfg)
    ours = WanDiT(cfg, dtype=torch.float32)
    ours.load_state_dict(diffusers_state_dict_to_official(ref.state_dict()), strict=True)
    return cfg, ref, ours.eval()


def _run_ref(ref, inp):
    x = torch.cat([inp["x"], inp["y"]], dim=1) if "y" in inp else inp["x"]
    out = ref(x, inp["t"], inp["context"], encoder_hidden_states_image=inp.get("clip_fea"), return_dict=False)
    return out[0]


def _diffusers_sinusoid(dim: int, t: torch.Tensor) -> torch.Tensor:
    """diffusers' Timesteps(flip_sin_to_cos=True, shift 0): the same formula, computed in fp32."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    s = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(s), torch.sin(s)], dim=1)


@pytest.mark.parametrize("i2v", [False, True], ids=["t2v", "i2v"])
def test_matches_diffusers(i2v, monkeypatch):
    cfg, ref, ours = _pair(i2v)
    inp = inputs(cfg)
    with torch.no_grad():
        want = _run_ref(ref, inp)
        got = ours(**inp)
        assert got.shape == want.shape == (2, 16, 3, 4, 6) and got.dtype == torch.float32
        # The official sinusoid is computed in float64 (diffusers: fp32); at t ~ 1000 that is the only
        # difference left, a few 1e-6 relative.
        assert rel_err(want, got) < 2e-5
        # With diffusers' fp32 sinusoid swapped in, the two agree to fp32 rounding.
        monkeypatch.setattr(dit_module, "sinusoidal_embedding", _diffusers_sinusoid)
        assert rel_err(want, ours(**inp)) < 2e-6
        torch.testing.assert_close(ours(**inp), want, rtol=1e-5, atol=1e-5)


def test_matches_diffusers_per_token_timesteps(monkeypatch):
    """Wan2.2-style t [B, L]: one timestep per token (e.g. the image frame at t=0 in TI2V)."""
    cfg, ref, ours = _pair(False)
    inp = inputs(cfg)
    tokens = 3 * 2 * 3
    t = torch.full((2, tokens), 800.0)
    t[:, :6] = 0.0  # first latent frame's tokens
    t[1] = torch.linspace(10, 990, tokens)
    inp["t"] = t
    monkeypatch.setattr(dit_module, "sinusoidal_embedding", _diffusers_sinusoid)
    with torch.no_grad():
        torch.testing.assert_close(ours(**inp), _run_ref(ref, inp), rtol=1e-5, atol=1e-5)


def test_per_token_timesteps_equal_to_batch_timesteps():
    cfg = tiny()
    model = WanDiT(cfg, dtype=torch.float32).eval()
    inp = inputs(cfg)
    with torch.no_grad():
        a = model(**inp)
        inp["t"] = inp["t"][:, None].expand(2, 18)
        b = model(**inp)
        c = model(inp["x"], 999.0, inp["context"])  # a plain number: the same timestep for every sample
        d = model(inp["x"], torch.tensor([999.0, 999.0]), inp["context"])
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(c, d, rtol=0, atol=0)


def test_context_list_is_zero_padded_to_text_len():
    cfg = tiny()
    model = WanDiT(cfg, dtype=torch.float32).eval()
    inp = inputs(cfg)
    rows = [torch.randn(7, cfg.text_dim), torch.randn(12, cfg.text_dim)]
    padded = torch.zeros(2, cfg.text_len, cfg.text_dim)
    padded[0, :7], padded[1, :12] = rows
    with torch.no_grad():
        want = model(inp["x"], inp["t"], padded)
        torch.testing.assert_close(model(inp["x"], inp["t"], rows), want, rtol=0, atol=0)
        torch.testing.assert_close(model(inp["x"], inp["t"], padded[:, :12]), want, rtol=0, atol=0)


def test_sinusoid_is_official():
    """cos first, base 10000, exponent -i/half, float64 then fp32."""
    t = torch.tensor([0.0, 1.0, 371.0, 999.0])
    emb = dit_module.sinusoidal_embedding(256, t)
    assert emb.dtype == torch.float32 and emb.shape == (4, 256)
    for row, tv in enumerate(t.tolist()):
        for i in (0, 1, 17, 127):
            angle = tv * 10000.0 ** (-i / 128)
            assert emb[row, i].item() == pytest.approx(math.cos(angle), abs=1e-7)
            assert emb[row, 128 + i].item() == pytest.approx(math.sin(angle), abs=1e-7)


def _official_rope(x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Re-statement of the official rope_params / rope_apply: complex float64 multipliers per axis band."""
    length, heads, d = x.shape

    def params(n: int, dim: int) -> torch.Tensor:
        inv = 1.0 / torch.pow(10000.0, torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        ang = torch.outer(torch.arange(n, dtype=torch.float64), inv)
        return torch.polar(torch.ones_like(ang), ang)

    hw = 2 * (d // 6)
    freqs = torch.cat([params(1024, d - 2 * hw), params(1024, hw), params(1024, hw)], dim=1)
    c = d // 2
    ft, fh, fw = freqs.split([c - 2 * (c // 3), c // 3, c // 3], dim=1)
    f, h, w = grid
    mult = torch.cat([
        ft[:f].view(f, 1, 1, -1).expand(f, h, w, -1),
        fh[:h].view(1, h, 1, -1).expand(f, h, w, -1),
        fw[:w].view(1, 1, w, -1).expand(f, h, w, -1),
    ], dim=-1).reshape(length, 1, c)
    xc = torch.view_as_complex(x.double().reshape(length, heads, c, 2))
    return torch.view_as_real(xc * mult).flatten(2).float()


@pytest.mark.parametrize("head_dim", [128, 64, 96])
def test_rope_is_official(head_dim):
    grid = (3, 5, 7)
    x = torch.randn(1, 105, 2, head_dim)
    cos, sin = rope_tables(grid, head_dim, dtype=torch.float64)
    got = apply_rope(x, cos, sin).float()
    torch.testing.assert_close(got[0], _official_rope(x[0], grid), rtol=1e-6, atol=1e-6)
    # fp32 rotation (used for bf16/fp16 runs) stays within fp32 rounding
    cos32, sin32 = rope_tables(grid, head_dim, dtype=torch.float32)
    got32 = apply_rope(x, cos32, sin32)[0]
    torch.testing.assert_close(got32, _official_rope(x[0], grid), rtol=1e-5, atol=1e-5)


def test_rope_bands():
    assert rope_bands(128) == (44, 42, 42)  # 22 / 21 / 21 complex pairs
    assert rope_bands(64) == (24, 20, 20)
    with pytest.raises(ValueError, match="even head dim"):
        rope_bands(127)
