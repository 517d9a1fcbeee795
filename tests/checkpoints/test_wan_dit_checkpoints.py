"""The real Wan DIT (tiny presets) with quantized checkpoints: LightX2V files built by hand from the spec
and our converter's files in every format run exactly like online quantization of the original."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from lightx2v_quant.checkpoints.convert import main as convert_main
from lightx2v_quant.checkpoints.discovery import find_dit
from lightx2v_quant.models.wan import load_dit, random_dit
from tests.checkpoints.spec import raw, spec_convert
from tests.models.dit_util import inputs, tiny


def _original(cfg, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    model = random_dit(cfg, torch.float32, "cpu", seed=5)
    return {k: v.to(dtype).contiguous() for k, v in model.state_dict().items()}


def _run(path, cfg, scheme: str, dtype=torch.float32):
    model = load_dit(path, cfg, dtype, "cpu", quant=scheme, check_config=False)
    with torch.no_grad():
        return model, model(**inputs(cfg, batch=1, ctx_len=16))


def _assert_same(a, b) -> None:
    (ma, ya), (mb, yb) = a, b
    sa, sb = ma.state_dict(), mb.state_dict()
    assert list(sa) == list(sb)
    assert all(sa[k].dtype == sb[k].dtype and torch.equal(raw(sa[k]), raw(sb[k])) for k in sa)
    assert torch.equal(ya, yb)


@pytest.mark.parametrize("i2v", [False, True], ids=["t2v", "i2v"])
@pytest.mark.parametrize("linear,scheme", [("fp8", "fp8-torch"), ("int8", "int8-torch")])
def test_hand_built_lightx2v_file_runs_like_online_quantization(tmp_path, linear, scheme, i2v):
    cfg = tiny(i2v)
    original = _original(cfg, torch.float32)  # official Wan2.1 DIT files are fp32
    save_file(original, tmp_path / "original.safetensors")
    save_file(spec_convert(original, "dit", linear, torch.bfloat16), tmp_path / "lightx2v.safetensors")
    dtype = torch.bfloat16  # the run dtype: non-linear tensors in bf16 either way
    from_file = _run(tmp_path / "lightx2v.safetensors", cfg, scheme, dtype)
    online = _run(tmp_path / "original.safetensors", cfg, scheme, dtype)
    per_block = 12 if i2v else 10
    assert len(from_file[0].load_report.prequantized) == cfg.num_layers * per_block
    assert len(online[0].load_report.quantized_online) == cfg.num_layers * per_block
    _assert_same(from_file, online)


@pytest.mark.parametrize(
    "fmt,scheme,layout",
    [
        ("fp8", "fp8-torch", "single"),
        ("int8", "int8-torch", "blocks"),
        ("int4-g128", "int4-g128-torch", "single"),
        ("fp8-b128", "fp8-b128-torch", "blocks"),
    ],
)
def test_converted_files_run_like_online_quantization(tmp_path, fmt, scheme, layout):
    cfg = tiny(True)
    save_file(_original(cfg, torch.bfloat16), tmp_path / "diffusion_pytorch_model.safetensors")
    assert convert_main([str(tmp_path), "-t", "dit", "-f", fmt, "--layout", layout, "--no-progress"]) == 0
    found = find_dit(tmp_path, fmt)
    assert found.kind == "prequantized"
    _assert_same(
        _run(found.path, cfg, scheme), _run(tmp_path / "diffusion_pytorch_model.safetensors", cfg, scheme)
    )
