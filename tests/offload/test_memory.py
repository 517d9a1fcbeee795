"""Memory estimates and offload=auto: the least offload that fits, and one clear error when nothing fits."""

import os

import pytest
from hydra import compose, initialize_config_dir

import lightx2v_quant.config  # noqa: F401  (registers the schema)
from lightx2v_quant.hardware import HardwareSpec
from lightx2v_quant.offload import memory as mem
from lightx2v_quant.quant.schemes import get_scheme
from lightx2v_quant.validate import ConfigError, validate

CONF = os.path.join(os.path.dirname(__file__), "..", "..", "conf")
H100 = HardwareSpec("NVIDIA H100 80GB HBM3", "cuda", (9, 0), 85.0)
RTX4090 = HardwareSpec("NVIDIA GeForce RTX 4090", "cuda", (8, 9), 25.3)


def cfg_for(*overrides):
    with initialize_config_dir(config_dir=os.path.abspath(CONF), version_base=None):
        return compose("config", overrides=["hardware=auto", *overrides])


def test_token_counts_match_the_task_files():
    assert mem.dit_tokens(480, 832, 81, (1, 2, 2)) == 32760
    assert mem.dit_tokens(720, 1280, 81, (1, 2, 2)) == 75600


def test_wan14b_weight_bytes():
    arch = cfg_for("model=wan2.1-t2v-14b").model.dit
    bf16 = mem.dit_bytes(arch, None, "bf16")
    assert bf16.total / 2 == pytest.approx(14.29e9, rel=0.01)  # Wan2.1-T2V-14B has ~14.29 B parameters
    fp8 = mem.dit_bytes(arch, get_scheme("fp8-torch"), "bf16")
    # a block: 8 [5120, 5120] + 2 ffn linears of 1 byte a weight, fp32 scales, bf16 biases and norms
    linears = 8 * 5120 * 5120 + 2 * 5120 * 13824
    assert fp8.blocks[0] == pytest.approx(linears, rel=0.01)
    assert fp8.phases[2] > fp8.phases[0] > fp8.phases[1] * 0.99
    assert sum(fp8.phases) == fp8.blocks[0]
    int4 = mem.dit_bytes(arch, get_scheme("int4-g128-torch"), "bf16")
    assert int4.blocks[0] < 0.6 * fp8.blocks[0]


def plan(hw, *overrides, host_gb=100.0):
    cfg = cfg_for(*overrides)
    problems = []
    dit = cfg.dit_quant.scheme
    schemes = {"dit": None if dit == "none" else get_scheme(dit), "t5": None}
    if cfg.model.task == "i2v":
        schemes["clip"] = None
    out = mem.plan_offload(cfg, hw, schemes, problems, host_bytes=host_gb * 1e9)
    return out, problems


def test_auto_picks_none_on_an_h100():
    p, problems = plan(H100, "model=wan2.1-t2v-14b", "task=480p", "dit_quant=fp8-torch", "offload=auto")
    assert not problems and p.mode == "none"
    assert "offload=auto chose none" in p.note


def test_auto_picks_the_least_offload_that_fits_a_24gb_card():
    base = ("model=wan2.1-t2v-14b", "dit_quant=fp8-torch", "offload=auto")
    p, _ = plan(RTX4090, *base, "task=480p", "offload.t5_cpu=true")
    assert p.mode == "none"  # 14.5 GB of fp8 weights + 480p activations fit with the T5 on the CPU
    p, _ = plan(RTX4090, *base, "task=480p")
    assert p.mode == "model"  # with the bf16 T5 on the card too they do not: the DIT moves in for the loop
    p, _ = plan(RTX4090, *base, "task=720p", "offload.t5_cpu=true")
    assert p.mode == "block"  # at 720p the activations leave no room for all the weights
    p, _ = plan(RTX4090, *base, "task=720p", "offload.t5_cpu=true", "offload.gpu_memory_gb=12.6")
    assert p.mode == "phase"
    small = ("task=480p", "offload.t5_cpu=true", "offload.gpu_memory_gb=12")
    p, problems = plan(RTX4090, *base, *small, host_gb=16)
    assert p is None and "disk needs dit_quant.ckpt" in problems[0]  # host too small, and no file to read
    p, _ = plan(RTX4090, *base, *small, "model.path=/models/wan", host_gb=16)
    assert (p.mode, p.granularity) == ("disk", "block")


def test_explicit_mode_that_does_not_fit_lists_the_options():
    p, problems = plan(RTX4090, "model=wan2.1-t2v-14b", "task=720p", "dit_quant=fp8-torch", "offload=none",
                       "offload.t5_cpu=true")
    assert len(problems) == 1
    assert "offload=none does not fit in GPU" in problems[0]
    assert "Options that fit: offload=block, offload=phase" in problems[0]
    _, problems = plan(RTX4090, "model=wan2.1-t2v-14b", "task=720p", "dit_quant=fp8-torch", "offload=none",
                       "offload.t5_cpu=true", "offload.check_memory=false")
    assert problems == []


def test_disk_needs_a_checkpoint_and_lazy_load_means_disk():
    _, problems = plan(RTX4090, "model=wan2.1-t2v-14b", "task=480p", "dit_quant=fp8-torch", "offload=disk")
    assert any("dit_quant.ckpt" in p for p in problems)
    _, problems = plan(RTX4090, "model=wan2.1-t2v-14b", "task=480p", "dit_quant=fp8-torch", "offload=block",
                       "offload.lazy_load=true")
    assert any("lazy_load=true" in p and "offload=disk" in p for p in problems)


def test_validate_records_the_plan_and_fails_before_loading():
    cfg = cfg_for("model=wan2.1-t2v-14b", "task=480p", "dit_quant=fp8-torch", "offload=auto",
                  "offload.t5_cpu=true")
    result = validate(cfg, detected=H100)
    assert result.offload.mode == "none" and result.summary()["offload"]["mode"] == "none"
    assert any("offload=auto chose" in n for n in result.notes)
    cfg = cfg_for("model=wan2.1-t2v-14b", "task=720p", "dit_quant=none", "offload=none")
    with pytest.raises(ConfigError, match="offload=none does not fit in GPU"):
        validate(cfg, detected=RTX4090)


def test_cpu_machine_auto_is_none():
    cpu = HardwareSpec("cpu", "cpu", None, 32.0)
    p, problems = plan(cpu, "offload=auto", "dit_quant=none")
    assert p.mode == "none" and not problems
