"""Look at a checkpoint without loading it: which format its quantized layers have, which dtypes it
holds, and whether it can serve a scheme. Safetensors are read header-only; .pth files are mapped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lightx2v_quant.checkpoints.reader import CheckpointError, TensorSource, open_checkpoint
from lightx2v_quant.quant.formats import FORMATS, GROUP, Format

Meta = tuple[tuple[int, ...], torch.dtype]
SHOW = 8


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def layer_format(weight: Meta, scale: Meta) -> str | None:
    """The format whose on-disk layout ``(weight, weight_scale)`` matches, or None.

    Per-channel scales are ``[N, 1]`` (``[N]`` accepted); fp8-block128 scales ``[ceil(N/128),
    ceil(K/128)]``; int4-g128 weights are uint8 ``[N, K/2]`` with ``[N, K/128]`` scales.
    """
    (wshape, wdtype), (sshape, _) = weight, scale
    if len(wshape) != 2:
        return None
    n, k = wshape
    per_channel = sshape in ((n, 1), (n,))
    if wdtype == torch.int8 and per_channel:
        return "w8a8-int8-channel"
    if wdtype == torch.float8_e4m3fn:
        if per_channel:
            return "w8a8-fp8-channel"
        if sshape == (_ceil_div(n, GROUP), _ceil_div(k, GROUP)):
            return "w8a8-fp8-block128"
    if wdtype == torch.uint8 and sshape == (n, (2 * k) // GROUP) and (2 * k) % GROUP == 0:
        return "w4a16-int4-g128"
    return None


@dataclass
class CheckpointInfo:
    """What a checkpoint holds (from headers only)."""

    path: str
    tensors: int = 0
    dtypes: Counter = field(default_factory=Counter)  # dtype name -> tensor count
    layers: dict[str, str] = field(default_factory=dict)  # quantized layer prefix -> format name
    problems: list[str] = field(default_factory=list)

    @property
    def formats(self) -> set[str]:
        return set(self.layers.values())

    @property
    def format(self) -> str | None:
        """The one format of the quantized layers; None when nothing is quantized (an original)."""
        fmts = self.formats
        return next(iter(fmts)) if len(fmts) == 1 else None

    @property
    def quantized(self) -> bool:
        return bool(self.layers)

    def summary(self) -> str:
        dts = ", ".join(f"{n} {d}" for d, n in sorted(self.dtypes.items()))
        kind = f"{len(self.layers)} layers in {self.format}" if self.quantized else "not quantized"
        return f"{self.path}: {self.tensors} tensors ({dts}); {kind}"


def _dtype_name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


def inspect_checkpoint(path: str | Path | TensorSource) -> CheckpointInfo:
    """Header-only look at a checkpoint file, index, per-block folder or an open TensorSource."""
    source = path if isinstance(path, TensorSource) else open_checkpoint(path)
    info = CheckpointInfo(path=source.describe())
    metas = {k: source.meta(k) for k in source.keys()}
    info.tensors = len(metas)
    info.dtypes = Counter(_dtype_name(dt) for _, dt in metas.values())
    for key, (shape, dtype) in metas.items():
        if key.endswith(".weight_scale"):
            prefix = key[: -len(".weight_scale")]
            if f"{prefix}.weight" not in metas:
                info.problems.append(f"{key} has no {prefix}.weight beside it")
                continue
            fmt = layer_format(metas[f"{prefix}.weight"], (shape, dtype))
            if fmt is None:
                wshape, wdtype = metas[f"{prefix}.weight"]
                info.problems.append(
                    f"{prefix}: weight {_dtype_name(wdtype)} {list(wshape)} with weight_scale {list(shape)} "
                    "is "
                    "not the layout of any format (fp8/int8 per-channel, int4-g128, fp8-block128)"
                )
            else:
                info.layers[prefix] = fmt
        elif key.endswith(".weight") and (dtype in (torch.int8, torch.uint8, torch.float8_e4m3fn)):
            if f"{key}_scale" not in metas:
                info.problems.append(
                    f"scale key missing: {key} is {_dtype_name(dtype)} (quantized) but {key}_scale is not in "
                    "the file; the file is incomplete: re-download or re-convert it"
                )
    if len(info.formats) > 1:
        by_fmt = Counter(info.layers.values())
        info.problems.append(f"the file mixes formats ({dict(by_fmt)}); a checkpoint must have one format")
    return info


def check_layout(info: CheckpointInfo, what: str) -> None:
    """Raise one CheckpointError listing layout problems (missing scales, unknown layouts, mixed formats)."""
    if info.problems:
        shown = "\n  ".join(info.problems[:SHOW])
        more = f"\n  ... ({len(info.problems) - SHOW} more)" if len(info.problems) > SHOW else ""
        raise CheckpointError(f"{what} checkpoint {info.path} is not usable:\n  {shown}{more}")


def check_format(
    info: CheckpointInfo, fmt: Format | str | None, what: str, scheme: str | None = None
) -> None:
    """Raise one CheckpointError when the checkpoint cannot serve ``fmt`` (None = unquantized run).

    An original (unquantized) checkpoint serves every format: it is quantized while loading.
    """
    fmt_name = fmt if isinstance(fmt, str) or fmt is None else fmt.name
    check_layout(info, what)
    if not info.quantized:
        return
    found = info.format
    if fmt_name is None:
        raise CheckpointError(
            f"{what} checkpoint {info.path} is quantized ({found}) but no quantization scheme is set: "
            f"choose a {FORMATS[found].short}-* scheme, or give the original checkpoint"
        )
    if found != fmt_name:
        want = f"scheme {scheme} ({fmt_name})" if scheme else f"format {fmt_name}"
        raise CheckpointError(
            f"{what} checkpoint {info.path} holds {found} weights, but {want} needs {fmt_name}: the file's "
            f"dtype does not match the scheme. Choose a {FORMATS[found].short}-* scheme, or convert the "
            "original "
            f"with `lightx2v-quant-convert ... --format {FORMATS[fmt_name].short}`"
        )
