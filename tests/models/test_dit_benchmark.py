"""benchmarks/dit.py runs end to end (on CPU, tiny model, one latent frame) and writes its JSON/markdown."""

from __future__ import annotations

import json

from benchmarks.dit import forward_flops, latent_shape, main
from lightx2v_quant.models.wan import WanDiTConfig


def test_latent_shapes_and_flops():
    assert latent_shape("480p", 81) == (21, 60, 104)  # 32,760 tokens after the 1x2x2 patch
    assert latent_shape("720p", 81) == (21, 90, 160)  # 75,600 tokens
    flops = forward_flops(WanDiTConfig.preset("wan2.1-t2v-14b"), 32760, 512)
    assert 1.6e15 < flops < 1.8e15


def test_benchmark_script_on_cpu(tmp_path, capsys):
    rc = main(["--model", "tiny-i2v", "--res", "480p", "--frames", "1", "--device", "cpu", "--warmup", "0",
               "--iters", "1", "--quant", "int8-torch", "--out", str(tmp_path)])
    assert rc == 0
    result = json.loads((tmp_path / "dit_tiny-i2v_480p_int8-torch_1f.json").read_text())
    assert result["tokens"] == 30 * 52 and result["latent"] == [16, 1, 60, 104]
    assert result["kernels"] == {"int8-torch via torch": 24} and result["output_finite"]
    assert len(result["times_ms"]) == 1 and result["peak_gib"] is None
    assert "| tiny-i2v | 480p | 1560 | int8-torch |" in (tmp_path / "dit_tiny-i2v_480p_int8-torch_1f.md").read_text()
