"""Config groups: every option composes, and the scheme options equal the registry (the one list)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import lightx2v_quant.config  # noqa: F401  (registers the schema)
from lightx2v_quant.quant.schemes import OPTION_NAMES, REGISTRY, SCHEME_NAMES

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")
QUANT_GROUPS = ("dit_quant", "t5_quant", "clip_quant")


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(overrides: list[str]):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("config", overrides=overrides)


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_option_of_every_group_composes(group, option):
    cfg = _compose([f"{group}={option}"])
    assert not OmegaConf.missing_keys(cfg), OmegaConf.missing_keys(cfg)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


@pytest.mark.parametrize("group", QUANT_GROUPS)
def test_quant_groups_offer_exactly_the_registry(group):
    assert _options(group) == sorted(OPTION_NAMES)


@pytest.mark.parametrize("group", QUANT_GROUPS)
def test_scheme_files_agree_with_registry(group):
    for path in (CONF / group).glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        assert data["scheme"] == path.stem
        if path.stem in REGISTRY:
            scheme = REGISTRY[path.stem]
            assert (data["format"], data["kernel"]) == (scheme.format, scheme.kernel), path
        else:
            assert data["format"] is None and data["kernel"] is None
        assert "ckpt" in data


def test_readme_names_every_scheme_and_no_other():
    readme = (ROOT / "README.md").read_text()
    for name in SCHEME_NAMES:
        assert f"`{name}`" in readme, f"README does not mention scheme {name}"
    pattern = re.compile(r"`((?:fp8|int8|int4-g128|fp8-b128)-[a-z0-9]+)`")
    format_shorts = {s.fmt.short for s in REGISTRY.values()}  # `fp8-b128` names a format, not a scheme
    unknown = {m for m in pattern.findall(readme) if m not in REGISTRY and m not in format_shorts}
    assert not unknown, f"README names schemes the registry does not have: {unknown}"


def test_readme_lists_every_option_of_every_group():
    readme = (ROOT / "README.md").read_text()
    for group in GROUPS:
        if group in QUANT_GROUPS:
            continue  # checked scheme by scheme above
        for option in _options(group):
            assert f"`{option}`" in readme, f"README does not document {group}={option}"


def test_unknown_key_in_a_group_is_rejected():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        _compose(["dit_quant.sheme=fp8"])


def test_typo_in_scheme_lists_options():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException) as info:
        _compose(["dit_quant=fp8-sglx"])
    assert "fp8-sgl" in str(info.value)
