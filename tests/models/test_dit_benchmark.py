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


def test_plan_machinery_on_cpu(tmp_path):
    """The plan runner on a tiny model on CPU: grouping, the diffusers peer on our weights, quality vs the
    reference, failures recorded (fused kernels and torchao float8 need CUDA) without stopping the plan."""
    from benchmarks import dit as bench
    from benchmarks.dit_plan import Entry, run_plan, table

    entries = [
        Entry("diffusers bf16 eager", "diffusers", iters=1, warmup=0),
        Entry("ours bf16 ref", fused=False, reference=True, iters=1, warmup=0),
        Entry("ours bf16 fused", fused=True, iters=1, warmup=0),  # CPU: configure_dit refuses -> recorded
        Entry("ours int8-torch", quant="int8-torch", iters=1, warmup=0),
        Entry("diffusers fp8", "diffusers-fp8", iters=1, warmup=0),  # torchao float8 is CUDA-only -> recorded
    ]
    res = run_plan("test", "tiny-t2v", 0, tmp_path, bench.make_inputs, bench.latent_shape, bench.forward_flops,
                   {"device": "cpu"}, device="cpu", frames=1, entries=entries)
    by = {r["entry"]["name"]: r for r in res}
    names = [r["entry"]["name"] for r in res]
    assert names[:3] == ["ours bf16 ref", "ours bf16 fused", "diffusers bf16 eager"]  # the bf16 model's group
    assert by["ours bf16 ref"]["rel_err"] == 0.0 and by["ours bf16 ref"]["psnr_db"] is None
    assert by["diffusers bf16 eager"]["rel_err"] < 0.05  # the same weights through diffusers' code
    assert 0 < by["ours int8-torch"]["rel_err"] < 0.2 and by["ours int8-torch"]["psnr_db"] > 15
    assert "fused=True" in by["ours bf16 fused"]["error"]
    assert "error" in by["diffusers fp8"]
    saved = json.loads((tmp_path / "dit_plan_test.json").read_text())
    assert len(saved["results"]) == 5
    assert "| ours int8-torch | 480p |" in table(res, "cpu")
