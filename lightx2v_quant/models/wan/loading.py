"""Build, load and randomly initialise a Wan DIT without materialising it twice.

The model is built on the ``meta`` device in the run dtype (optionally with fp32 sensitive layers and
empty ``QuantLinear`` shells), then filled tensor by tensor by ``lightx2v_quant.checkpoints.loader``
from the official safetensors files, or from seeded random tensors made on the target device.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lightx2v_quant.checkpoints.loader import LoadReport, load_into
from lightx2v_quant.checkpoints.random_source import RandomSource
from lightx2v_quant.checkpoints.reader import CheckpointError, open_checkpoint
from lightx2v_quant.models.wan.dit import QUANTIZABLE, WanDiT
from lightx2v_quant.models.wan.dit_config import WanDiTConfig
from lightx2v_quant.quant.apply import quantize_model
from lightx2v_quant.quant.schemes import NONE

INDEX_FILE = "diffusion_pytorch_model.safetensors.index.json"
SINGLE_FILE = "diffusion_pytorch_model.safetensors"
# config.json keys of the official WanModel that must equal the WanDiTConfig fields of the same name
_CONFIG_KEYS = ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "text_dim", "freq_dim",
                "text_len", "eps", "patch_size")


def build_dit(
    cfg: WanDiTConfig,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "meta",
    *,
    sensitive_fp32: bool = False,
    quant: str | None = None,
    kernel: str | None = None,
    attention_backend: str = "sdpa",
    fast_accum: bool = False,
) -> WanDiT:
    """A Wan DIT in the run ``dtype``. On ``meta`` (the default): parameter shells for a loader, with the
    ``QUANTIZABLE`` linears swapped for empty ``QuantLinear`` of scheme ``quant`` (None or "none": not
    quantized). On a real device: built there with PyTorch's default init (quantized online if asked)."""
    with torch.device(device):
        model = WanDiT(cfg, dtype=dtype, sensitive_fp32=sensitive_fp32, attention_backend=attention_backend)
    if quant not in (None, NONE):
        empty = torch.device(device).type == "meta"
        quantize_model(model, quant, QUANTIZABLE, kernel=kernel, empty=empty, fast_accum=fast_accum)
    return model.requires_grad_(False).eval()


def dit_files(path: str | Path | Sequence[str | Path]) -> Path | list[Path]:
    """The file(s) of an official DIT checkpoint: a .safetensors file, an index .json, a list of shards, or a
    folder holding ``diffusion_pytorch_model.safetensors[.index.json]``."""
    if isinstance(path, (list, tuple)):
        return [Path(p) for p in path]
    p = Path(path)
    if not p.is_dir():
        if not p.exists():
            raise CheckpointError(f"DIT checkpoint {p} does not exist")
        return p
    for name in (INDEX_FILE, SINGLE_FILE):
        if (p / name).is_file():
            return p / name
    found = sorted(x.name for x in p.iterdir() if x.suffix in (".safetensors", ".json", ".pth", ".pt"))
    raise CheckpointError(
        f"{p} holds no official DIT checkpoint ({INDEX_FILE} or {SINGLE_FILE}); it has: "
        f"{', '.join(found) or 'no checkpoint files'}. Give the file(s) explicitly (quantized LightX2V "
        "folders are found by the checkpoint discovery, not by load_dit)"
    )


def check_config_json(config_file: Path, cfg: WanDiTConfig) -> None:
    """Compare an official ``config.json`` with ``cfg``; raise one error listing every difference."""
    try:
        data: dict[str, Any] = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{config_file} is not readable JSON ({exc})") from exc
    if data.get("_class_name") not in (None, "WanModel"):
        raise CheckpointError(
            f"{config_file} describes a {data['_class_name']}, not the official WanModel: load_dit reads the "
            "official layout only (convert diffusers weights with the converter first)"
        )
    diffs = []
    for key in _CONFIG_KEYS:
        if key in data:
            want = list(getattr(cfg, key)) if key == "patch_size" else getattr(cfg, key)
            have = list(data[key]) if key == "patch_size" else data[key]
            if (abs(have - want) > 1e-12 * max(1.0, abs(want))) if key == "eps" else have != want:
                diffs.append(f"{key}: file {have}, config {want}")
    if diffs:
        raise CheckpointError(f"{config_file} does not match the model config: " + "; ".join(diffs)
                              + ". Choose the model preset of these files (e.g. model=wan2.1-t2v-14b).")


def load_dit(
    path: str | Path | Sequence[str | Path],
    cfg: WanDiTConfig,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    *,
    quant: str | None = None,
    kernel: str | None = None,
    sensitive_fp32: bool = False,
    attention_backend: str = "sdpa",
    fast_accum: bool = False,
    check_config: bool = True,
    progress: bool = False,
) -> WanDiT:
    """Load an official Wan DIT checkpoint (strict keys and shapes) onto ``device`` in ``dtype``.

    With ``quant`` the ``QUANTIZABLE`` linears become ``QuantLinear``: quantized while loading from a
    high-precision file, or read as they are from a file of that format (``weight_scale`` present).
    The ``LoadReport`` is kept as ``model.load_report``.
    """
    files = dit_files(path)
    folder = files[0].parent if isinstance(files, list) else files.parent
    if check_config and (folder / "config.json").is_file():
        check_config_json(folder / "config.json", cfg)
    source = open_checkpoint(files)
    model = build_dit(cfg, dtype, "meta", sensitive_fp32=sensitive_fp32, quant=quant, kernel=kernel,
                      attention_backend=attention_backend, fast_accum=fast_accum)
    model.load_report = load_into(model, source, device=device, what="Wan DIT", progress=progress)
    return model


def _dit_init(key: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """Weights of rank >= 2 ~ N(0, 1/fan_in), modulation tables ~ N(0, 1/dim), 1-D weights (norms)
    ~ 1 + N(0, 0.05^2), biases ~ N(0, 0.02^2): activations stay finite through 40 bf16 blocks."""
    leaf = key.rpartition(".")[2]
    if leaf == "modulation":
        return 0.0, shape[-1] ** -0.5
    if leaf == "bias":
        return 0.0, 0.02
    if len(shape) == 1:
        return 1.0, 0.05
    fan_in = 1
    for s in shape[1:]:
        fan_in *= s
    return 0.0, fan_in**-0.5


def random_dit(
    cfg: WanDiTConfig,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    seed: int = 0,
    *,
    quant: str | None = None,
    kernel: str | None = None,
    sensitive_fp32: bool = False,
    attention_backend: str = "sdpa",
    fast_accum: bool = False,
    draw_on: torch.device | str | None = None,
) -> WanDiT:
    """A Wan DIT with seeded random weights (see ``RandomSource``) on ``device``; with ``quant`` its linears
    are quantized from the same fp32 random weights while loading. The values depend on the device the
    generators run on, ``draw_on`` (default ``device``): a runner that builds on the CPU for offload draws
    on its GPU so that the weights equal those of a run without offload."""
    shapes = {k: tuple(v.shape) for k, v in build_dit(cfg, dtype, "meta").state_dict().items()}
    model = build_dit(cfg, dtype, "meta", sensitive_fp32=sensitive_fp32, quant=quant, kernel=kernel,
                      attention_backend=attention_backend, fast_accum=fast_accum)
    source = RandomSource(shapes, _dit_init, seed, draw_on or device)
    model.load_report = load_into(model, source, device=device, what="Wan DIT")
    return model


__all__ = [
    "LoadReport", "build_dit", "check_config_json", "dit_files", "load_dit", "random_dit",
]
