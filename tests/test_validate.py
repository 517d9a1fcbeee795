"""Launch-time validation against the machine: one error with every problem and the alternatives."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import lightx2v_quant.config  # noqa: F401
from lightx2v_quant.hardware import HardwareSpec, parse_compute_capability
from lightx2v_quant.validate import ConfigError, choose_auto, validate

CONF = str(Path(__file__).resolve().parents[1] / "conf")
CPU = HardwareSpec("cpu", "cpu", None, 24.0)
H100 = HardwareSpec("NVIDIA H100 80GB HBM3", "cuda", (9, 0), 85.0)
RTX4090 = HardwareSpec("NVIDIA GeForce RTX 4090", "cuda", (8, 9), 25.0)
A100 = HardwareSpec("NVIDIA A100-SXM4-80GB", "cuda", (8, 0), 85.0)


def _cfg(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=CONF):
        return compose("config", overrides=list(overrides))


def test_fp8_sgl_for_h100_on_a_cpu_machine_names_every_problem():
    with pytest.raises(ConfigError) as info:
        validate(_cfg("dit_quant=fp8-sgl", "hardware=h100"), detected=CPU)
    msg = str(info.value)
    assert "hardware=h100" in msg and "no CUDA GPU" in msg
    assert "dit_quant=fp8-sgl" in msg
    assert "fp8-torch" in msg  # the runnable alternative for the same format
    assert "quant.fallback=native" in msg
    assert len(info.value.problems) == 2


def test_named_cpu_runs_native_schemes():
    plan = validate(_cfg("dit_quant=fp8-torch", "hardware=cpu"), detected=CPU)
    assert plan.components["dit"].label == "fp8-torch via torch"
    assert plan.hardware.device == "cpu"


def test_hardware_cpu_on_a_gpu_machine_means_run_on_cpu():
    plan = validate(_cfg("dit_quant=int8-torch", "hardware=cpu"), detected=H100)
    assert plan.hardware.device == "cpu"


def test_named_gpu_must_match_detected_gpu():
    with pytest.raises(ConfigError, match="sm_90 but the detected GPU"):
        validate(_cfg("dit_quant=int8-torch", "hardware=h100"), detected=A100)
    plan = validate(_cfg("dit_quant=int8-torch", "hardware=h100"), detected=H100)
    assert plan.hardware.sm == 90


def test_fp8_needs_sm89():
    with pytest.raises(ConfigError, match="needs sm_89"):
        validate(_cfg("dit_quant=fp8-torch", "hardware=a100"), detected=A100)


def test_q8_kernels_run_on_ada_only():
    with pytest.raises(ConfigError) as info:
        validate(_cfg("dit_quant=fp8-q8f"), detected=H100)
    assert "sm_89 only" in str(info.value)


def test_deepgemm_needs_hopper():
    with pytest.raises(ConfigError, match="sm_90"):
        validate(_cfg("dit_quant=fp8-b128-deepgemm"), detected=RTX4090)


def test_explicit_fallback_substitutes_and_records_it():
    plan = validate(_cfg("dit_quant=fp8-sgl", "quant.fallback=native"), detected=CPU)
    dit = plan.components["dit"]
    assert dit.scheme.name == "fp8-sgl" and dit.kernel == "torch"
    assert "quant.fallback=native" in dit.note and dit.note in plan.notes


def test_unknown_fallback_value():
    with pytest.raises(ConfigError, match="quant.fallback=sometimes"):
        validate(_cfg("quant.fallback=sometimes"), detected=CPU)


def test_scheme_typo_through_the_key_lists_close_matches():
    with pytest.raises(ConfigError) as info:
        validate(_cfg("dit_quant.scheme=fp8-sglx"), detected=CPU)
    assert "fp8-sgl" in str(info.value)


def test_kernel_that_disagrees_with_the_scheme():
    with pytest.raises(ConfigError, match="dit_quant.kernel=vllm does not match"):
        validate(_cfg("dit_quant=fp8-torch", "dit_quant.kernel=vllm"), detected=CPU)


def test_shape_the_format_cannot_hold():
    with pytest.raises(ConfigError, match="in_features % 128"):
        validate(_cfg("dit_quant=int4-g128-torch", "model.dit.dim=200", "model.dit.ffn_dim=400"),
                 detected=CPU)


def test_offload_needs_a_gpu():
    with pytest.raises(ConfigError, match="offload=block"):
        validate(_cfg("offload=block", "dit_quant=none"), detected=CPU)


def test_auto_prefers_fp8_on_sm89_and_int8_on_cpu():
    assert choose_auto(CPU)[0].name == "int8-torch"
    scheme, note = choose_auto(H100)
    assert scheme.format == "w8a8-fp8-channel" and scheme.name in note


def test_unused_component_is_noted_not_validated():
    plan = validate(_cfg("clip_quant=fp8-sgl"), detected=CPU)  # t2v has no CLIP: not an error
    assert "clip" not in plan.components
    assert any("clip_quant" in n for n in plan.notes)


@pytest.mark.parametrize("value,expected", [("9.0", (9, 0)), (8.9, (8, 9)), ("90", (9, 0)), (None, None)])
def test_parse_compute_capability(value, expected):
    assert parse_compute_capability(value) == expected
