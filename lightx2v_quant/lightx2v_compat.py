"""Migration for LightX2V users: translate a LightX2V JSON config into Hydra overrides of our groups.

``python run.py lightx2v_config=wan_i2v.json dit_quant=fp8-sgl``: run.py expands the file into
overrides placed *before* the user's, so every later command-line override still wins (a key the user
sets is dropped from the translation). Keys or values we cannot honour are collected and raised in
one error; nothing is skipped silently. docs/pipeline.md has the table.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightx2v_quant.quant.schemes import SCHEME_NAMES

ARG = "lightx2v_config"
# LightX2V's encoder classes accept the bare format names (t5/model.py, xlm_roberta/model.py).
SCHEME_ALIASES = {"fp8": "fp8-sgl", "int8": "int8-vllm"}
UNQUANTIZED = ("Default", "none", None)
GRANULARITIES = ("block", "phase", "model")
# LightX2V attention kernel names -> ours (hardware.attention). One backend serves all attentions.
ATTENTION = {
    "torch_sdpa": "sdpa",
    "flash_attn2": "flash_attn2",
    "flash_attn3": "flash_attn3",
    "sage_attn2": "sage_attn2",
}
ATTENTION_KEYS = ("self_attn_1_type", "cross_attn_1_type", "cross_attn_2_type")
# Keys accepted only with the value that matches what we always do, and why.
MATCHING = {
    "text_len": (512, "the T5 context is always padded to 512 tokens"),
    "feature_caching": ("NoCaching", "feature caching (TeaCache etc.) is not implemented"),
    "do_mm_calib": (False, "activation calibration is not implemented"),
    "use_tiling_vae": (False, "the VAE decodes in causal time chunks, without spatial tiling"),
    "use_tae": (False, "the tiny autoencoder (TAE) is not supported"),
    "unload_modules": (False, "modules stay loaded for the run"),
    "rotary_chunk": (False, "RoPE is applied in one piece"),
    "t5_lazy_load": (False, "the T5 checkpoint is read at load"),
    "clip_cpu_offload": (False, "CLIP runs on the compute device"),
    "vae_cpu_offload": (False, "the VAE runs on the compute device"),
    "clip_attn_type": ("torch_sdpa", "CLIP attention is torch SDPA"),
    "weight_auto_quant": (False, "online quantization happens when a scheme meets an unquantized file"),
}
RENAMED = {  # LightX2V key -> our override key, value copied as is
    "infer_steps": "sampler.steps",
    "sample_shift": "sampler.shift",
    "enable_cfg": "sampler.cfg",
    "boundary": "sampler.boundary",
    "boundary_step_index": "sampler.boundary_step",
    "target_video_length": "task.frames",
    "target_height": "task.height",
    "target_width": "task.width",
    "fps": "task.fps",
    "num_disk_workers": "offload.num_disk_workers",
    "seed": "seed",
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "image_path": "image",
    "model_path": "model.path",
}
HINTS = {
    "mm_config": 'the pre-October-2025 quantization key; use dit_quant_scheme (e.g. "fp8-sgl")',
    "offload_ratio": "removed from LightX2V's Wan offload (PR #476); offload moves every block",
    "model_cls": "choose the model on the command line: model=<option> (see conf/model/)",
    "task": "the task follows the model option: model=<option> (see conf/model/)",
    "dit_original_ckpt": "put the official files in model.path",
    "high_noise_quantized_ckpt": "put the experts' files in model.path/high_noise_model and low_noise_model",
    "low_noise_quantized_ckpt": "put the experts' files in model.path/high_noise_model and low_noise_model",
    "quant_method": "SmoothQuant/AWQ (advanced_ptq) checkpoints are not supported",
}


class LightX2VConfigError(ValueError):
    """Every key of a LightX2V config that cannot be translated, in one message."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        lines = [f"{ARG}={source}: {len(problems)} setting(s) cannot be translated:"]
        lines += [f"  - {p}" for p in problems]
        lines.append(
            "Edit a copy of the file (or use our command-line options instead); "
            "docs/pipeline.md lists every supported key."
        )
        super().__init__("\n".join(lines))


def _fmt(value: Any) -> str:
    """A value in Hydra's override grammar."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_fmt(v) for v in value) + "]"
    text = str(value)
    if re.fullmatch(r"[\w./~:@+-]+", text) and text.lower() not in ("true", "false", "null"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _scheme(
    comp: str, data: dict[str, Any], out: dict[str, str], problems: list[str], used: set[str]
) -> None:
    qkey, skey, ckey = f"{comp}_quantized", f"{comp}_quant_scheme", f"{comp}_quantized_ckpt"
    used.update((qkey, skey, ckey))
    quantized, scheme, ckpt = bool(data.get(qkey, False)), data.get(skey), data.get(ckey)
    group = f"{comp}_quant"
    if not quantized:
        out[group] = "none"  # LightX2V's default: not quantized, whatever the scheme says
        if ckpt:
            problems.append(
                f"{ckey}={ckpt!r} is given but {qkey} is false: set {qkey}: true or drop the path"
            )
        return
    if scheme in UNQUANTIZED:
        what = "missing" if scheme is None else repr(scheme)
        problems.append(f'{qkey} is true but {skey} is {what}: name a scheme, e.g. "fp8-sgl"')
        return
    name = SCHEME_ALIASES.get(scheme, scheme)
    if name not in SCHEME_NAMES:
        problems.append(f"{skey}={scheme!r} has no equivalent here; schemes: {', '.join(SCHEME_NAMES)}")
        return
    out[group] = name
    if ckpt:
        out[f"{group}.ckpt"] = _fmt(ckpt)


def _offload(data: dict[str, Any], out: dict[str, str], problems: list[str], used: set[str]) -> None:
    used.update(("cpu_offload", "offload_granularity", "lazy_load", "t5_cpu_offload"))
    granularity = data.get("offload_granularity", "block")
    lazy = bool(data.get("lazy_load", False))
    if "t5_cpu_offload" in data:
        out["offload.t5_cpu"] = _fmt(bool(data["t5_cpu_offload"]))
    if not data.get("cpu_offload", False):
        out["offload"] = "none"  # offload_granularity means nothing without cpu_offload (as in LightX2V)
        if lazy:
            problems.append("lazy_load: true needs cpu_offload: true (LightX2V asserts the same)")
        return
    if granularity not in GRANULARITIES:
        problems.append(f"offload_granularity={granularity!r}: expected one of {', '.join(GRANULARITIES)}")
        return
    if lazy:
        if granularity == "model":
            problems.append(
                "lazy_load: true reads blocks from disk: offload_granularity must be block or phase"
            )
            return
        out["offload"] = "disk"
        out["offload.granularity"] = granularity
    else:
        out["offload"] = granularity


def _sampling(data: dict[str, Any], out: dict[str, str], problems: list[str], used: set[str]) -> None:
    used.update(("denoising_step_list", "sample_guide_scale"))
    steps = data.get("denoising_step_list")
    if steps is not None:
        if not isinstance(steps, list) or not steps:
            problems.append(f"denoising_step_list={steps!r}: expected a list such as [1000, 750, 500, 250]")
        else:
            out["sampler"] = "distill"
            out["sampler.timesteps"] = _fmt([int(s) for s in steps])
            n = data.get("infer_steps")
            if n is not None and n != len(steps):
                problems.append(f"infer_steps={n} but denoising_step_list has {len(steps)} steps")
    scale = data.get("sample_guide_scale")
    if isinstance(scale, list):
        if len(scale) != 2:
            problems.append(f"sample_guide_scale={scale}: a list must be [high_noise, low_noise]")
        else:
            out["sampler.guide_scale"] = _fmt(float(scale[0]))
            out["sampler.guide_scale_low_noise"] = _fmt(float(scale[1]))
    elif scale is not None:
        out["sampler.guide_scale"] = _fmt(float(scale))


def _attention(data: dict[str, Any], out: dict[str, str], problems: list[str], used: set[str]) -> None:
    used.update(ATTENTION_KEYS)
    given = {k: data[k] for k in ATTENTION_KEYS if k in data}
    if not given:
        return
    unknown = {k: v for k, v in given.items() if v not in ATTENTION}
    if unknown:
        problems += [f"{k}={v!r}: attention backends: {', '.join(ATTENTION)}" for k, v in unknown.items()]
        return
    names = {ATTENTION[v] for v in given.values()}
    if len(names) > 1:
        problems.append(
            f"{', '.join(f'{k}={v}' for k, v in given.items())}: one attention backend serves "
            f"every attention here; make them equal"
        )
        return
    out["hardware.attention"] = names.pop()


STEPS: tuple[Callable[..., None], ...] = (_offload, _sampling, _attention)


def translate(data: dict[str, Any], source: str = "<dict>") -> dict[str, str]:
    """{override key: value} for a LightX2V config dict; raises LightX2VConfigError listing every problem."""
    if not isinstance(data, dict):
        raise LightX2VConfigError(source, [f"expected a JSON object, got {type(data).__name__}"])
    out: dict[str, str] = {}
    problems: list[str] = []
    used: set[str] = set()
    for comp in ("dit", "t5", "clip"):
        _scheme(comp, data, out, problems, used)
    for step in STEPS:
        step(data, out, problems, used)
    for key, value in data.items():
        if key in used:
            continue
        if key in RENAMED:
            if key == "infer_steps" and "denoising_step_list" in data:
                continue  # the step list decides; checked against infer_steps above
            out[RENAMED[key]] = _fmt(value)
        elif key == "use_image_encoder":
            continue  # the model option decides: Wan2.1 I2V has CLIP, Wan2.2 has none
        elif key in MATCHING:
            want, why = MATCHING[key]
            if value != want:
                problems.append(f"{key}={value!r}: only {json.dumps(want)} is supported ({why})")
        elif key in HINTS:
            problems.append(f"{key}: {HINTS[key]}")
        else:
            problems.append(f"{key}: not a LightX2V setting we know")
    if problems:
        raise LightX2VConfigError(source, problems)
    return out


def load(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise LightX2VConfigError(str(path), [f"no such file: {p.resolve()}"])
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise LightX2VConfigError(str(path), [f"not valid JSON: {exc}"]) from None


def overrides_for(path: str | Path) -> list[str]:
    """The Hydra overrides a LightX2V JSON file translates to, e.g. ["dit_quant=int8-vllm", ...]."""
    return [f"{k}={v}" for k, v in translate(load(path), str(path)).items()]


def _is_override(arg: str) -> bool:
    return "=" in arg and not arg.startswith("-")


def override_key(arg: str) -> str:
    """The config key of a command-line override (``+a.b=1`` -> ``a.b``)."""
    return arg.split("=", 1)[0].lstrip("+~")


def expand(args: list[str]) -> list[str]:
    """Replace ``lightx2v_config=PATH`` in a command line (or a compose() override list) by the file's
    overrides, placed before the first override so that the user's own overrides come later and win.
    The translation of a key the user sets explicitly is dropped. ``lightx2v_config=PATH`` is kept,
    so the run's config records where its settings came from."""
    found = [a for a in args if _is_override(a) and override_key(a) == ARG]
    if not found:
        return list(args)
    values = [a.split("=", 1)[1] for a in found]
    if len(found) > 1 or any(
        ("," in v and not v.startswith(("'", '"'))) or v.startswith(("glob(", "range(")) for v in values
    ):
        why = "give one file; sweeping over LightX2V configs is not supported (run one sweep per file)"
        raise LightX2VConfigError(",".join(values), [why])
    path = values[0].strip("'\"")
    user_keys = {override_key(a) for a in args if _is_override(a)}
    translated = [o for o in overrides_for(path) if override_key(o) not in user_keys]
    first = next(i for i, a in enumerate(args) if _is_override(a))
    return [*args[:first], *translated, *args[first:]]
