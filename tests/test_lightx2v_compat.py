"""LightX2V JSON configs -> our overrides: each shipped config kind translates and composes, later command-line
overrides win, and every key we cannot honour is listed in one error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import lightx2v_quant.config  # noqa: F401  (registers the schema)
from lightx2v_quant.lightx2v_compat import LightX2VConfigError, expand, overrides_for, translate

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "lightx2v"
I2V_SAMPLING = {
    "sampler.steps": "40",
    "sampler.shift": "5",
    "sampler.guide_scale": "5.0",
    "sampler.cfg": "true",
    "task.frames": "81",
    "task.height": "480",
    "task.width": "832",
}

EXPECTED = {
    "wan_i2v.json": {
        "dit_quant": "int8-vllm",
        "dit_quant.ckpt": "/path/to/int8/model",
        "t5_quant": "none",
        "clip_quant": "none",
        "offload": "none",
        "hardware.attention": "sage_attn2",
        **I2V_SAMPLING,
    },
    "wan_i2v_q8f.json": {
        "dit_quant": "int8-q8f",
        "t5_quant": "int8-q8f",
        "clip_quant": "int8-q8f",
        "offload": "none",
        "hardware.attention": "sage_attn2",
        **I2V_SAMPLING,
        "sampler.steps": "4",
        "sampler.cfg": "false",
    },
    "wan_i2v_torchao.json": {
        "dit_quant": "int8-torchao",
        "t5_quant": "int8-torchao",
        "clip_quant": "int8-torchao",
        "offload": "none",
        "hardware.attention": "sage_attn2",
        **I2V_SAMPLING,
        "sampler.steps": "4",
        "sampler.cfg": "false",
    },
    "wan_i2v_block.json": {
        "dit_quant": "fp8-q8f",
        "t5_quant": "fp8-q8f",
        "clip_quant": "fp8-q8f",
        "offload": "block",
        "offload.t5_cpu": "false",
        "hardware.attention": "flash_attn3",
        **I2V_SAMPLING,
    },
    "wan_i2v_phase.json": {
        "dit_quant": "fp8-q8f",
        "t5_quant": "fp8-q8f",
        "clip_quant": "fp8-q8f",
        "offload": "phase",
        "offload.t5_cpu": "false",
        "hardware.attention": "sage_attn2",
        **I2V_SAMPLING,
    },
    "wan_i2v_distill_fp8_4step_cfg.json": {
        "dit_quant": "fp8-sgl",
        "dit_quant.ckpt": "lightx2v/Wan2.1-Distill-Models/wan2.1_i2v_480p_scaled_fp8_e4m3_lightx2v_4step.safetensors",
        "t5_quant": "none",
        "clip_quant": "none",
        "offload": "none",
        "sampler": "distill",
        "sampler.timesteps": "[1000,750,500,250]",
        "sampler.guide_scale": "6.0",
        "sampler.shift": "5",
        "sampler.cfg": "false",
        "task.frames": "81",
        "task.height": "480",
        "task.width": "832",
        "hardware.attention": "flash_attn3",
    },
    "wan_moe_t2v.json": {
        "dit_quant": "none",
        "t5_quant": "none",
        "clip_quant": "none",
        "offload": "none",
        "offload.t5_cpu": "false",
        "sampler.steps": "40",
        "sampler.shift": "12.0",
        "sampler.guide_scale": "4.0",
        "sampler.guide_scale_low_noise": "3.0",
        "sampler.cfg": "true",
        "sampler.boundary": "0.875",
        "task.frames": "81",
        "task.height": "720",
        "task.width": "1280",
        "hardware.attention": "flash_attn3",
    },
}
MODEL_FOR = {
    "wan_moe_t2v.json": "wan2.2-t2v-a14b",
    "wan_i2v_distill_fp8_4step_cfg.json": "wan2.1-i2v-14b-480p",
}


def _compose(overrides: list[str]):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return compose("config", overrides=overrides)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_config_translates(name):
    got = translate(json.loads((FIXTURES / name).read_text()), name)
    assert got == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_config_composes(name):
    model = MODEL_FOR.get(name, "wan2.1-i2v-14b-480p")
    cfg = _compose(expand([f"lightx2v_config={FIXTURES / name}", f"model={model}"]))
    assert not OmegaConf.missing_keys(cfg)
    data = json.loads((FIXTURES / name).read_text())
    assert cfg.lightx2v_config == str(FIXTURES / name)
    assert cfg.dit_quant.scheme == EXPECTED[name]["dit_quant"]
    assert cfg.task.frames == data["target_video_length"] and cfg.task.height == data["target_height"]
    assert cfg.sampler.shift == data["sample_shift"] and cfg.sampler.cfg == data["enable_cfg"]
    if "denoising_step_list" in data:
        assert cfg.sampler.name == "distill" and list(cfg.sampler.timesteps) == data["denoising_step_list"]
    else:
        assert cfg.sampler.steps == data["infer_steps"]
    if data.get("cpu_offload"):
        assert cfg.offload.mode == data["offload_granularity"]


def test_later_command_line_overrides_win():
    path = FIXTURES / "wan_i2v_block.json"
    args = expand(
        [
            f"lightx2v_config={path}",
            "model=wan2.1-i2v-14b-480p",
            "dit_quant=fp8-torch",
            "sampler.steps=3",
            "offload=none",
            "hardware.attention=sdpa",
        ]
    )
    assert args.index("offload=none") > args.index("model=wan2.1-i2v-14b-480p")
    assert "offload=block" not in args and "dit_quant=fp8-q8f" not in args  # the user's keys replace them
    cfg = _compose(args)
    assert cfg.dit_quant.scheme == "fp8-torch" and cfg.sampler.steps == 3
    assert cfg.offload.mode == "none" and cfg.hardware.attention == "sdpa"
    assert cfg.t5_quant.scheme == "fp8-q8f"  # translated keys the user did not set stay


def test_scheme_aliases_and_disk_offload():
    data = {
        "dit_quantized": True,
        "dit_quant_scheme": "fp8-vllm",
        "t5_quantized": True,
        "t5_quant_scheme": "fp8",
        "clip_quantized": True,
        "clip_quant_scheme": "int8",
        "cpu_offload": True,
        "offload_granularity": "phase",
        "lazy_load": True,
        "num_disk_workers": 2,
    }
    got = translate(data)
    assert got["t5_quant"] == "fp8-sgl" and got["clip_quant"] == "int8-vllm"
    assert got["offload"] == "disk" and got["offload.granularity"] == "phase"
    assert got["offload.num_disk_workers"] == "2"


def test_unsupported_keys_are_listed_in_one_error():
    with pytest.raises(LightX2VConfigError) as info:
        overrides_for(FIXTURES / "wan_i2v_phase_lazy_load_480p.json")
    message = str(info.value)
    assert "3 setting(s)" in message
    for key in ("use_tiling_vae", "use_tae", "tae_path"):
        assert key in message
    assert [p.split(":")[0].split("=")[0] for p in info.value.problems] == [
        "use_tiling_vae",
        "use_tae",
        "tae_path",
    ]


@pytest.mark.parametrize(
    "data,needle",
    [
        ({"dit_quantized": True, "dit_quant_scheme": "nvfp4"}, "dit_quant_scheme='nvfp4' has no equivalent"),
        ({"dit_quantized": True}, "dit_quant_scheme is missing"),
        ({"cpu_offload": False, "lazy_load": True}, "lazy_load: true needs cpu_offload"),
        ({"mm_config": {"mm_type": "W-fp8"}}, "mm_config: the pre-October-2025"),
        ({"feature_caching": "Tea"}, "feature_caching='Tea': only \"NoCaching\""),
        ({"self_attn_1_type": "flash_attn3", "cross_attn_1_type": "sage_attn2"}, "one attention backend"),
        (
            {"infer_steps": 8, "denoising_step_list": [1000, 500]},
            "infer_steps=8 but denoising_step_list has 2",
        ),
        ({"sample_guide_scale": [1, 2, 3]}, "[high_noise, low_noise]"),
        ({"made_up_key": 1}, "made_up_key: not a LightX2V setting we know"),
    ],
)
def test_each_problem_has_a_clear_line(data, needle):
    with pytest.raises(LightX2VConfigError) as info:
        translate(data)
    assert needle in str(info.value)


def test_quoting_of_odd_values():
    got = translate(
        {
            "prompt": "a cat, walking = fast 'now'",
            "dit_quantized": True,
            "dit_quant_scheme": "fp8-torch",
            "dit_quantized_ckpt": "/m/with space.safetensors",
        }
    )
    cfg = _compose([f"{k}={v}" for k, v in got.items()])
    assert cfg.prompt == "a cat, walking = fast 'now'"
    assert cfg.dit_quant.ckpt == "/m/with space.safetensors"


def test_sweeping_lightx2v_configs_is_refused():
    with pytest.raises(LightX2VConfigError, match="sweeping"):
        expand(["-m", "lightx2v_config=a.json,b.json"])


def test_run_py_reports_untranslatable_keys_and_exits_2(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run.py"),
            f"lightx2v_config={FIXTURES / 'wan_i2v_phase_lazy_load_480p.json'}",
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 2
    assert "use_tae" in proc.stderr and "Traceback" not in proc.stderr


def test_run_py_applies_the_file_before_the_command_line():
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run.py"),
            f"lightx2v_config={FIXTURES / 'wan_i2v.json'}",
            "model=wan2.1-i2v-14b-480p",
            "sampler.steps=7",
            "--cfg",
            "job",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    cfg = OmegaConf.create(proc.stdout)
    assert cfg.sampler.steps == 7 and cfg.sampler.shift == 5 and cfg.dit_quant.scheme == "int8-vllm"


def test_run_py_keeps_sweep_folder_names_to_the_users_overrides():
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run.py"),
            f"lightx2v_config={FIXTURES / 'wan_i2v.json'}",
            "sampler.steps=7",
            "--cfg",
            "hydra",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    excluded = OmegaConf.create(proc.stdout).hydra.job.config.override_dirname.exclude_keys
    assert {"dit_quant", "dit_quant.ckpt", "sampler.shift", "lightx2v_config", "prompt"} <= set(excluded)
    assert "sampler.steps" not in excluded  # the user's own override names the folder
