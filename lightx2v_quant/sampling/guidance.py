"""Classifier-free guidance and the official default negative prompts."""

from __future__ import annotations

import torch

# The official Wan negative prompt (wan/configs/shared_config.py `sample_neg_prompt`), used when the
# user gives none. It lists, in Chinese, what the video should not look like: garish colours,
# overexposure, static or blurry frames, subtitles, low quality, JPEG artefacts, deformed hands and
# faces, extra fingers, fused fingers, messy backgrounds, three legs, crowds, walking backwards.
DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
# Image-to-video prepends "camera shake," (镜头晃动，) to the same list.
I2V_NEGATIVE_PREFIX = "镜头晃动，"


def default_negative_prompt(task: str) -> str:
    """The official default for ``task`` ("t2v" or "i2v")."""
    return (I2V_NEGATIVE_PREFIX if task == "i2v" else "") + DEFAULT_NEGATIVE_PROMPT


def resolve_negative_prompt(given: str | None, task: str) -> str:
    """An empty or missing negative prompt means the official default, as in the official generate.py."""
    return given if given else default_negative_prompt(task)


def guide(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """``v = v_uncond + scale * (v_cond - v_uncond)`` (two separate passes, as the official code)."""
    return v_uncond + scale * (v_cond - v_uncond)
