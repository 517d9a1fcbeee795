"""The Hydra model options build a WanDiTConfig: ``WanDiTConfig(**cfg.model.dit)``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lightx2v_quant.config import DitArch, ModelConfig
from lightx2v_quant.models.wan import WanDiTConfig

MODEL_DIR = Path(__file__).resolve().parents[2] / "conf" / "model"
EXPECTED_PRESET = {
    "tiny-t2v": "tiny-t2v", "tiny-i2v": "tiny-i2v", "wan2.1-t2v-1.3b": "wan2.1-t2v-1.3b",
    "wan2.1-t2v-14b": "wan2.1-t2v-14b", "wan2.1-i2v-14b-480p": "wan2.1-i2v-14b",
    "wan2.1-i2v-14b-720p": "wan2.1-i2v-14b",
}


def test_dit_arch_fields_equal_wan_dit_config_fields():
    arch = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(DitArch)}
    ours = {f.name: f.default for f in dataclasses.fields(WanDiTConfig)}
    assert arch.keys() == ours.keys()
    assert WanDiTConfig(**arch) == WanDiTConfig()


@pytest.mark.parametrize("path", sorted(MODEL_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_model_option_builds_the_preset(path):
    node = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(path))
    cfg = WanDiTConfig(**node.dit)
    if path.stem in EXPECTED_PRESET:
        assert cfg == WanDiTConfig.preset(EXPECTED_PRESET[path.stem])
    assert (cfg.image_dim is not None) == (node.task == "i2v" and node.family == "wan2.1")
