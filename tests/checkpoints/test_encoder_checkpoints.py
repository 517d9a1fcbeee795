"""The real T5 and CLIP encoders (tiny configs) with our converter's LightX2V-format .pth files: loading
the quantized file equals quantizing the original while loading, to the bit."""

from __future__ import annotations

import pytest
import torch

from lightx2v_quant.checkpoints.convert import main as convert_main
from lightx2v_quant.checkpoints.discovery import find_encoder
from lightx2v_quant.models.wan import CLIP_TINY, T5_TINY, load_clip, load_t5, random_clip, random_t5
from lightx2v_quant.models.wan.encoders_loading import CLIP_FILE, T5_FILE
from tests.checkpoints.spec import raw


def _same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(sa[k].dtype == sb[k].dtype and torch.equal(raw(sa[k]), raw(sb[k])) for k in sa)


@pytest.mark.parametrize("fmt,scheme", [("fp8", "fp8-torch"), ("int8", "int8-torch")])
def test_t5_file_equals_online_quantization(tmp_path, fmt, scheme):
    sd = {k: v.to(torch.bfloat16) for k, v in random_t5(T5_TINY, torch.float32, seed=1).state_dict().items()}
    torch.save(sd, tmp_path / T5_FILE)
    assert convert_main([str(tmp_path), "-t", "t5", "-f", fmt, "--no-progress"]) == 0
    found = find_encoder("t5", tmp_path, fmt)
    assert found.kind == "prequantized" and found.path.name == f"models_t5_umt5-xxl-enc-{fmt}.pth"
    from_file = load_t5(found.path, T5_TINY, dtype="bf16", quant=scheme)
    online = load_t5(tmp_path / T5_FILE, T5_TINY, dtype="bf16", quant=scheme)
    assert len(from_file.load_report.prequantized) == 7 * T5_TINY.num_layers
    _same(from_file, online)
    ids = torch.randint(1, 200, (1, 12))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        assert torch.equal(from_file(ids, mask), online(ids, mask))


@pytest.mark.parametrize("fmt,scheme", [("fp8", "fp8-torch"), ("int8", "int8-torch")])
def test_clip_file_equals_online_quantization(tmp_path, fmt, scheme):
    sd = {
        k: v.to(torch.float16) for k, v in random_clip(CLIP_TINY, torch.float32, seed=2).state_dict().items()
    }
    sd = {"log_scale": torch.tensor(4.6), **sd, "textual.blocks.0.attn.q.weight": torch.randn(16, 16)}
    torch.save(sd, tmp_path / CLIP_FILE)
    assert convert_main([str(tmp_path), "-t", "clip", "-f", fmt, "--no-progress"]) == 0
    found = find_encoder("clip", tmp_path, fmt)
    assert found.kind == "prequantized"
    from_file = load_clip(found.path, CLIP_TINY, dtype="fp16", quant=scheme)
    online = load_clip(tmp_path / CLIP_FILE, CLIP_TINY, dtype="fp16", quant=scheme)
    assert len(from_file.load_report.prequantized) == 4 * CLIP_TINY.num_layers
    _same(from_file, online)
