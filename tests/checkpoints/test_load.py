"""Loading quantized checkpoints: LightX2V files built by hand from the spec, and our converter's files
in every format and layout, give exactly what online quantization of the original gives."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from lightx2v_quant.checkpoints.convert import main as convert_main
from lightx2v_quant.checkpoints.discovery import find_dit
from lightx2v_quant.checkpoints.loader import load_into
from lightx2v_quant.checkpoints.reader import open_checkpoint
from lightx2v_quant.checkpoints.synthetic import dit_shapes, random_state_dict
from lightx2v_quant.quant.apply import quantize_model
from tests.checkpoints.spec import TinyDit, raw, spec_convert

TINY = dict(dim=128, ffn_dim=256, num_layers=2, text_dim=64, freq_dim=32)


def _original(dtype=torch.float32) -> dict[str, torch.Tensor]:
    return random_state_dict(dit_shapes(**TINY), dtype, seed=3)


def _model(scheme: str) -> TinyDit:
    with torch.device("meta"):
        model = TinyDit(**TINY)
    quantize_model(model, scheme, TinyDit.QUANT_PATTERNS, empty=True)
    return model


def _load(scheme: str, path, **kw) -> tuple[TinyDit, object]:
    model = _model(scheme)
    report = load_into(model, open_checkpoint(path), what="dit", **kw)
    return model.eval(), report


def _same_model(a: TinyDit, b: TinyDit) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(raw(sa[k]), raw(sb[k])), k
    x, ctx = torch.randn(1, 24, TINY["dim"]), torch.randn(1, 7, TINY["text_dim"])
    with torch.no_grad():
        assert torch.equal(a(x, ctx), b(x, ctx))


@pytest.mark.parametrize("src_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("linear,scheme", [("fp8", "fp8-torch"), ("int8", "int8-torch")])
def test_hand_built_lightx2v_file_equals_online_quantization(tmp_path, linear, scheme, src_dtype):
    original = _original(src_dtype)
    save_file(original, tmp_path / "original.safetensors")
    # Built from the written spec (tests/checkpoints/spec.py), saved with safetensors itself.
    save_file(spec_convert(original, "dit", linear, None), tmp_path / "lightx2v.safetensors")

    from_file, rep_file = _load(scheme, tmp_path / "lightx2v.safetensors")
    online, rep_online = _load(scheme, tmp_path / "original.safetensors")
    assert len(rep_file.prequantized) == 2 * 10 and not rep_file.quantized_online
    assert len(rep_online.quantized_online) == 2 * 10 and not rep_online.prequantized
    _same_model(from_file, online)
    # and the quantized model tracks the full-precision one
    ref = TinyDit(**TINY)
    ref.load_state_dict({k: v.float() for k, v in original.items()})
    x, ctx = torch.randn(1, 24, TINY["dim"]), torch.randn(1, 7, TINY["text_dim"])
    with torch.no_grad():
        y, y_ref = from_file(x, ctx), ref(x, ctx)
    assert float((y - y_ref).norm() / y_ref.norm()) < 0.05


FORMAT_SCHEMES = [
    ("fp8", "fp8-torch"),
    ("int8", "int8-torch"),
    ("int4-g128", "int4-g128-torch"),
    ("fp8-b128", "fp8-b128-torch"),
]


@pytest.mark.parametrize("layout", ["single", "blocks", "pth"])
@pytest.mark.parametrize("fmt,scheme", FORMAT_SCHEMES)
def test_round_trip_convert_save_load_equals_online(tmp_path, fmt, scheme, layout):
    src_dtype = torch.bfloat16 if fmt == "int8" else torch.float32
    save_file(_original(src_dtype), tmp_path / "diffusion_pytorch_model.safetensors")
    assert convert_main([str(tmp_path), "-t", "dit", "-f", fmt, "--layout", layout, "--no-progress"]) == 0
    if layout == "pth":  # DIT discovery looks for safetensors (as LightX2V); a .pth is named directly
        path = tmp_path / fmt / f"diffusion_pytorch_model_{fmt}.pth"
    else:
        found = find_dit(tmp_path, fmt)
        assert found.kind == "prequantized" and tmp_path / fmt in (found.path, found.path.parent)
        path = found.path
    from_file, rep = _load(scheme, path)
    online, _ = _load(scheme, tmp_path / "diffusion_pytorch_model.safetensors")
    assert len(rep.prequantized) == 20
    _same_model(from_file, online)


def test_scale_dtype_rounds_scales_like_lightx2v(tmp_path):
    save_file(_original(), tmp_path / "o.safetensors")
    model, _ = _load("fp8-torch", tmp_path / "o.safetensors", scale_dtype=torch.bfloat16)
    exact, _ = _load("fp8-torch", tmp_path / "o.safetensors")
    s, s_exact = model.blocks[0].ffn[0].weight_scale, exact.blocks[0].ffn[0].weight_scale
    assert (
        s.dtype == torch.float32
        and torch.equal(s, s_exact.bfloat16().float())
        and not torch.equal(s, s_exact)
    )
