"""The pipeline end to end on tiny models (CPU, seeded random weights): the embedded default writes a playable
mp4 and a report; sweeps summarise every job and survive an impossible one; I2V, the distilled sampler, the
Wan2.2 expert switch and the reference comparison work."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import lightx2v_quant.config  # noqa: F401  (registers the schema)
from lightx2v_quant.validate import ConfigError, validate
from runners import run_pipeline

ROOT = Path(__file__).resolve().parents[1]
FAST = ["sampler.steps=2"]
SMALL = ["task.height=32", "task.width=32", "task.frames=1"]  # one latent frame: the quickest valid video


def run_py(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return compose("config", overrides=overrides)


def run_inprocess(tmp_path: Path, overrides: list[str]) -> dict:
    cfg = compose_cfg(overrides)
    result = run_pipeline(cfg, validate(cfg), tmp_path)
    assert (tmp_path / "video.mp4").is_file()
    report = json.loads((tmp_path / "report.json").read_text())
    assert result["components"].keys() == report["components"].keys()
    return report


def read_mp4(path: Path):
    import imageio.v2 as imageio

    frames = imageio.mimread(path, memtest=False)
    return frames, imageio.get_reader(path).get_meta_data()


def test_default_command_writes_a_playable_video_and_a_report(tmp_path):
    """`python run.py` with no arguments (the README's main job), in a fresh run dir."""
    proc = run_py(f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    frames, meta = read_mp4(tmp_path / "video.mp4")
    assert len(frames) == 5 and frames[0].shape == (64, 64, 3)
    assert meta["codec"] == "h264" and meta["fps"] == 16
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["random_weights"] is True and "RANDOM WEIGHTS" in report["warning"]
    assert report["video"] == {
        "path": "video.mp4",
        "frames": 5,
        "height": 64,
        "width": 64,
        "fps": 16,
        "codec": "h264 (yuv420p)",
    }
    dit = report["components"]["dit"]
    assert dit["requested"] == "auto" and dit["scheme"] is not None  # auto picked a scheme that runs here
    assert dit["kernels_used"] == {f"{dit['scheme']} via {dit['kernel']}": dit["quantized_layers"]}
    assert dit["quantized_layers"] > 0 and dit["weight_bytes"] > 0
    assert len(report["step_times_s"]) == report["sampler"]["steps"] == 10
    for stage in (
        "load_text_encoder",
        "encode_text",
        "load_dit",
        "denoise",
        "decode",
        "write_video",
        "total",
    ):
        assert report["times_s"][stage] >= 0
    assert report["memory"]["cpu_peak_rss_bytes"] > 0
    assert report["seed"] == 42 and report["negative_prompt"]  # the official default negative prompt
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "ok"
    assert (tmp_path / "resolved_config.yaml").is_file()
    log = (tmp_path / "run.log").read_text()
    assert "RANDOM WEIGHTS" in log and "denoising step: mean" in log


def test_sweep_summarises_every_job_and_survives_an_impossible_one(tmp_path):
    """Three jobs; fp8-sgl with hardware=cpu cannot run anywhere (it needs CUDA): it is recorded as
    invalid and the job after it still runs."""
    proc = run_py(
        "-m",
        "dit_quant=int8-torch,fp8-sgl,none",
        "hardware=cpu",
        *FAST,
        *SMALL,
        f"hydra.sweep.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "summary.json").read_text())["jobs"]
    assert [r["status"] for r in rows] == ["ok", "invalid", "ok"]
    assert [r["dit"] for r in rows] == ["int8-torch via torch", None, "none (unquantized)"]
    assert "dit_quant=fp8-sgl" in rows[1]["error_full"]
    assert all(r["step_s"] > 0 and r["dit_weight_gib"] > 0 for r in (rows[0], rows[2]))
    assert rows[0]["dit_weight_gib"] < rows[2]["dit_weight_gib"]  # int8 weights are smaller than bf16
    md = (tmp_path / "summary.md").read_text()
    assert sum(line.startswith("| ") for line in md.splitlines()) == 4  # header + 3 jobs
    assert "### job 1: dit_quant=fp8-sgl" in md
    assert (tmp_path / "summary.png").stat().st_size > 1000
    assert len(list(tmp_path.glob("*/video.mp4"))) == 2


def test_image_to_video_with_an_input_image(tmp_path):
    from PIL import Image

    image = tmp_path / "first_frame.png"
    Image.new("RGB", (100, 60), (200, 120, 40)).save(image)
    report = run_inprocess(
        tmp_path,
        [
            "model=tiny-i2v",
            f"image={image}",
            "clip_quant=int8-torch",
            *FAST,
            "task.height=32",
            "task.width=32",
        ],
    )
    # 100x60 in a 32x32-pixel budget: the official aspect rule gives 32x16
    assert (report["video"]["width"], report["video"]["height"]) == (32, 16)
    frames, _ = read_mp4(tmp_path / "video.mp4")
    assert len(frames) == 5 and frames[0].shape == (16, 32, 3)
    assert report["image"] == str(image)
    assert report["components"]["clip"]["kernels_used"] == {"int8-torch via torch": 12}
    assert report["latent_shape"] == [16, 2, 2, 4]


def test_image_to_video_needs_an_image_with_real_weights(tmp_path):
    cfg = compose_cfg(["model=tiny-i2v", f"model.path={tmp_path}"])
    with pytest.raises(ConfigError, match="give the first frame, image="):
        validate(cfg)


def test_wan22_experts_switch_at_the_boundary(tmp_path):
    report = run_inprocess(tmp_path, ["model=tiny-moe-t2v", "sampler.steps=4", *SMALL])  # t: 999 972 923 799
    timesteps = report["sampler"]["model_timesteps"]
    expected = ["dit.high_noise" if t >= 875 else "dit.low_noise" for t in timesteps]
    assert report["experts_per_step"] == expected
    assert "dit.high_noise" in expected and "dit.low_noise" in expected  # the tiny schedule crosses 875
    assert report["dit_calls"] == {k: 2 * expected.count(k) for k in ("dit.high_noise", "dit.low_noise")}
    assert (
        report["components"]["dit.high_noise"]["weights"] != report["components"]["dit.low_noise"]["weights"]
    )


def test_wan22_boundary_step_overrides_the_boundary(tmp_path):
    report = run_inprocess(
        tmp_path, ["model=tiny-moe-t2v", "sampler=distill", "sampler.boundary_step=2", *SMALL]
    )
    assert report["experts_per_step"] == ["dit.high_noise"] * 2 + ["dit.low_noise"] * 2


def test_distilled_sampler_four_steps_no_cfg(tmp_path):
    report = run_inprocess(tmp_path, ["sampler=distill", *SMALL])
    assert report["sampler"]["model_timesteps"] == pytest.approx([1000.0, 937.5, 833.3333, 625.0])
    assert report["dit_calls"] == {"dit": 4} and report["negative_prompt"] is None
    assert report["runner"] == "wan2.1 t2v, distilled (4 steps, no CFG)"


def test_reference_run_reports_quantization_error(tmp_path):
    report = run_inprocess(tmp_path, ["dit_quant=int8-torch", "report.reference=true", *FAST, *SMALL])
    q = report["quality"]
    assert 0 < q["latent_rel_error"] < 0.2 and 20 < q["psnr_db"] < math.inf


def test_reference_of_an_unquantized_run_is_identical(tmp_path):
    report = run_inprocess(tmp_path, ["dit_quant=none", "report.reference=true", *FAST, *SMALL])
    assert report["quality"]["latent_rel_error"] == 0.0 and report["quality"]["psnr_db"] == math.inf


def test_size_problems_in_one_error():
    cfg = compose_cfg(["task.height=100", "task.frames=6"])
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    message = str(info.value)
    assert "multiples of 16" in message and "4k+1" in message and message.count("\n  - ") == 2


def test_t5_on_the_cpu_needs_a_cpu_scheme():
    from lightx2v_quant.pipeline_checks import pipeline_problems

    problems = pipeline_problems(compose_cfg(["offload.t5_cpu=true", "t5_quant=fp8-sgl"]))
    assert any("t5_quant=fp8-sgl with offload.t5_cpu=true" in p and "fp8-torch" in p for p in problems)
    assert not pipeline_problems(compose_cfg(["offload.t5_cpu=true", "t5_quant=int8-torch"]))


def test_random_real_size_model_validates_with_random_weights():
    cfg = compose_cfg(["model=wan2.1-t2v-14b", "dit_quant=int8-torch", "task=tiny"])
    plan = validate(cfg)
    assert plan.components["dit"].scheme.name == "int8-torch" and cfg.model.path is None


@pytest.mark.gpu
def test_tiny_pipeline_on_cuda(tmp_path):
    report = run_inprocess(tmp_path, ["report.reference=true"])
    assert report["device"].startswith("cuda") and report["memory"]["gpu_peak_allocated_bytes"] > 0
    assert report["quality"]["psnr_db"] > 20


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["model", "block", "phase"])
def test_offloaded_dit_gives_the_same_video_on_cuda(tmp_path, mode):
    base = run_inprocess(tmp_path / "none", ["dit_quant=none", *FAST])
    off = run_inprocess(tmp_path / mode, ["dit_quant=none", f"offload={mode}", *FAST])
    assert off["offload"]["mode"] == mode and off["offload"].get("stats")
    a, _ = read_mp4(tmp_path / "none" / "video.mp4")
    b, _ = read_mp4(tmp_path / mode / "video.mp4")
    assert all((x == y).all() for x, y in zip(a, b)) and base["offload"]["mode"] == "none"


@pytest.mark.gpu
def test_real_size_random_model_on_cuda(tmp_path):
    """wan2.1-t2v-1.3b with random weights (umT5-XXL included) at a tiny video size."""
    report = run_inprocess(tmp_path, ["model=wan2.1-t2v-1.3b", "task=tiny", *FAST])
    assert report["random_weights"] and report["components"]["t5"]["weight_bytes"] > 10 * 2**30
    assert torch.cuda.max_memory_allocated() > 0


def _write_official_folder(folder: Path) -> None:
    """The tiny model's random weights saved in the official Wan2.1 layout and file names."""
    from safetensors.torch import save_file

    from lightx2v_quant.models.wan import T5Config, VaeConfig, WanDiTConfig, random_dit, random_t5, random_vae
    from runners.components import SEED_OFFSETS

    cfg = compose_cfg([])
    folder.mkdir()
    dit = random_dit(WanDiTConfig.from_dict(dict(cfg.model.dit)), torch.bfloat16, "cpu", SEED_OFFSETS["dit"])
    save_file(
        {k: v.contiguous() for k, v in dit.state_dict().items()},
        folder / "diffusion_pytorch_model.safetensors",
    )
    t5 = random_t5(T5Config.from_mapping(cfg.model.t5), torch.bfloat16, "cpu", seed=SEED_OFFSETS["t5"])
    torch.save(t5.state_dict(), folder / "models_t5_umt5-xxl-enc-bf16.pth")
    vae = random_vae(VaeConfig.preset("tiny"), seed=SEED_OFFSETS["vae"])
    torch.save(vae.state_dict(), folder / "Wan2.1_VAE.pth")


def test_official_files_in_model_path_give_the_same_video_as_the_same_random_weights(tmp_path):
    pytest.importorskip("lightx2v_quant.checkpoints.discovery")
    model = tmp_path / "tiny-model"
    _write_official_folder(model)
    small = ["dit_quant=none", *FAST, *SMALL]
    run_inprocess(tmp_path / "random", small)
    loaded_report = run_inprocess(tmp_path / "loaded", [*small, f"model.path={model}"])
    assert not loaded_report["random_weights"] and loaded_report["warning"] is None
    assert str(model / "diffusion_pytorch_model.safetensors") in loaded_report["components"]["dit"]["weights"]
    assert "models_t5_umt5-xxl-enc-bf16.pth" in loaded_report["components"]["t5"]["weights"]
    random_frames, _ = read_mp4(tmp_path / "random" / "video.mp4")
    loaded_frames, _ = read_mp4(tmp_path / "loaded" / "video.mp4")
    assert all((a == b).all() for a, b in zip(random_frames, loaded_frames))
    quantized = run_inprocess(
        tmp_path / "online", ["dit_quant=int8-torch", *FAST, *SMALL, f"model.path={model}"]
    )
    assert quantized["components"]["dit"]["quantized_online_layers"] == 20  # original file, quantized on load
