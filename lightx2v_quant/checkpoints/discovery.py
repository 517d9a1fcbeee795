"""Find the checkpoint of a component (DIT, T5, CLIP) for a scheme, the way LightX2V lays files out.

``<component>_quant.ckpt`` (a file or folder) wins when given. Otherwise ``model.path`` is searched in
LightX2V's folder order (layout.SEARCH_FOLDERS): first for a pre-quantized file of the scheme's format,
then for the original, which is quantized while loading. The result says what was chosen and why.
A folder with two DIT checkpoints is an error (LightX2V would silently merge them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lightx2v_quant.checkpoints.inspect import CheckpointInfo, check_format, check_layout, inspect_checkpoint
from lightx2v_quant.checkpoints.layout import (
    CLIP_STEM,
    EXPERTS,
    SEARCH_FOLDERS,
    T5_STEM,
    encoder_file_name,
    expert_tag,
    format_by_name,
)
from lightx2v_quant.checkpoints.reader import (
    NON_BLOCK_FILE,
    CheckpointError,
    TensorSource,
    block_files,
    open_checkpoint,
    safetensors_shards,
)
from lightx2v_quant.quant.formats import Format

_SHARD = re.compile(r"(.+)-(\d+)-of-(\d+)\.safetensors")
_INDEX_SUFFIX = ".safetensors.index.json"


@dataclass(frozen=True)
class FoundCheckpoint:
    """A checkpoint chosen for a component: what it is and why it was chosen."""

    component: str
    paths: tuple[Path, ...]  # one file / index / per-block folder, or shards without an index
    kind: str  # "prequantized" (load as is) or "original" (quantize while loading, or run unquantized)
    format: str | None  # format of the file's quantized layers; None for an original
    reason: str

    @property
    def path(self) -> Path:
        return self.paths[0]

    def open(self) -> TensorSource:
        return open_checkpoint(list(self.paths) if len(self.paths) > 1 else self.path)

    def describe(self) -> str:
        where = self.path if len(self.paths) == 1 else f"{len(self.paths)} shards {self.path.parent}/..."
        what = f"pre-quantized {self.format}" if self.kind == "prequantized" else "original (not quantized)"
        return f"{self.component}: {what} checkpoint {where} ({self.reason})"


def _is_dit_candidate(name: str) -> bool:
    low = name.lower()
    return (
        name.endswith(".safetensors")
        and not name.startswith(".")
        and not low.startswith((T5_STEM, CLIP_STEM))
        and "vae" not in low
    )


def list_dit_checkpoints(
    folder: Path, expert: str | None = None, require_tag: bool = False
) -> list[tuple[Path, ...]]:
    """The DIT checkpoints directly in ``folder``: a per-block set (the folder itself), each index
    ``*.safetensors.index.json`` with its shards, ``name-0000k-of-0000n`` shards without an index, and
    every other ``*.safetensors`` file (T5 / CLIP / VAE file names and hidden files are skipped).

    With ``expert`` (Wan2.2 ``high_noise`` / ``low_noise``), files named for the other expert are
    skipped, and with ``require_tag`` only files named for ``expert`` count."""
    if not folder.is_dir():
        return []
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    used: set[str] = set()
    found: list[tuple[Path, ...]] = []
    blocks = block_files(folder)
    if blocks is not None:
        used |= {NON_BLOCK_FILE, *(p.name for p in blocks)}
        found.append((folder,))
    for name in names:
        if name.endswith(_INDEX_SUFFIX) and not name.startswith("."):
            shards = safetensors_shards(folder / name)
            if blocks is not None and {p.name for p in shards} <= used:
                continue  # the index of the per-block set
            used |= {p.name for p in shards}
            found.append((folder / name,))
    groups: dict[str, list[str]] = {}
    for name in names:
        m = _SHARD.fullmatch(name)
        if m and name not in used and _is_dit_candidate(name):
            groups.setdefault(m.group(1), []).append(name)
    for shard_names in groups.values():
        used |= set(shard_names)
        found.append(tuple(folder / n for n in sorted(shard_names)))
    found += [(folder / n,) for n in names if n not in used and _is_dit_candidate(n)]
    if expert is not None:
        tags = [expert_tag(p[0].name if p[0] != folder else "") for p in found]
        if require_tag or any(tags):
            found = [p for p, t in zip(found, tags) if t == expert]
    return found


def _show(paths: tuple[Path, ...]) -> str:
    return str(paths[0]) if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} shards)"


def ambiguous_dit_error(folder: Path, found: list[tuple[Path, ...]]) -> CheckpointError:
    listed = "\n  ".join(_show(p) for p in found)
    return CheckpointError(
        f"{folder} holds {len(found)} DIT checkpoints:\n  {listed}\n"
        "LightX2V would merge them into one model; "
        "keep one DIT checkpoint per folder (move the others into fp8/, int8/, original/ ...) or name the "
        "file with dit_quant.ckpt=<file>"
    )


def _fmt(fmt: Format | str | None) -> Format | None:
    return format_by_name(fmt) if isinstance(fmt, str) else fmt


def _record(component: str, paths: tuple[Path, ...], info: CheckpointInfo, reason: str) -> FoundCheckpoint:
    kind = "prequantized" if info.quantized else "original"
    return FoundCheckpoint(component, paths, kind, info.format, reason)


def _inspect(paths: tuple[Path, ...]) -> CheckpointInfo:
    return inspect_checkpoint(open_checkpoint(list(paths)) if len(paths) > 1 else paths[0])


def find_dit(
    model_path: str | Path | None,
    fmt: Format | str | None = None,
    ckpt: str | Path | None = None,
    expert: str | None = None,
    scheme: str | None = None,
) -> FoundCheckpoint:
    """The DIT checkpoint for format ``fmt`` (None = unquantized run); ``expert`` for Wan2.2 MoE."""
    fmt = _fmt(fmt)
    what = f"dit ({expert})" if expert else "dit"
    if expert is not None and expert not in EXPERTS:
        raise ValueError(f"expert must be one of {EXPERTS}, got {expert!r}")
    if ckpt is not None:
        return _explicit_dit(Path(ckpt), fmt, expert, scheme, what)
    if model_path is None:
        raise CheckpointError(f"{what}: no checkpoint: model.path is not set and no dit_quant.ckpt is given")
    root = Path(model_path)
    roots = [(root / f"{expert}_model", False), (root, True)] if expert else [(root, False)]
    candidates: list[tuple[tuple[Path, ...], CheckpointInfo, Path]] = []
    looked: list[str] = []
    for base, require_tag in roots:
        for sub in SEARCH_FOLDERS:
            folder = base / sub if sub else base
            looked.append(f"{folder}/")
            found = list_dit_checkpoints(folder, expert, require_tag)
            if len(found) > 1:
                raise ambiguous_dit_error(folder, found)
            if found:
                info = _inspect(found[0])
                check_layout(info, what)
                candidates.append((found[0], info, folder))
    return _choose(
        what,
        "dit",
        candidates,
        fmt,
        scheme,
        looked,
        "a DIT *.safetensors (one file, an index with shards, or non_block + block_{i} files)",
    )


def _explicit_dit(
    ckpt: Path, fmt: Format | None, expert: str | None, scheme: str | None, what: str
) -> FoundCheckpoint:
    if ckpt.is_file():
        if expert is not None and expert_tag(ckpt.name) not in (None, expert):
            raise CheckpointError(f"{what}: dit_quant.ckpt={ckpt} is named for the other expert")
        paths = (ckpt,)
    elif ckpt.is_dir():
        folder = ckpt / f"{expert}_model" if expert and (ckpt / f"{expert}_model").is_dir() else ckpt
        found = list_dit_checkpoints(folder, expert)
        if len(found) > 1:
            raise ambiguous_dit_error(folder, found)
        if not found:
            raise CheckpointError(
                f"{what}: nothing usable in dit_quant.ckpt={folder}: no DIT *.safetensors "
                "(one file, an index with shards, or non_block + block_{i} files)"
            )
        paths = found[0]
    else:
        raise CheckpointError(f"{what}: dit_quant.ckpt={ckpt} does not exist")
    info = _inspect(paths)
    check_format(info, fmt, what, scheme)
    return _record("dit", paths, info, "given as dit_quant.ckpt")


def _choose(what, component, candidates, fmt: Format | None, scheme, looked, looked_for) -> FoundCheckpoint:
    if fmt is not None:
        for paths, info, folder in candidates:
            if info.format == fmt.name:
                return _record(
                    component, paths, info, f"pre-quantized {fmt.short} checkpoint found in {folder}"
                )
    for paths, info, folder in candidates:
        if not info.quantized:
            how = f"original found in {folder}"
            if fmt is not None:
                how += (
                    f"; quantized to {fmt.short} while loading (no pre-quantized {fmt.short} file was found)"
                )
            return _record(component, paths, info, how)
    if candidates:
        listed = "\n  ".join(f"{_show(p)}: {i.format}" for p, i, _ in candidates)
        want = (
            f"scheme {scheme} ({fmt.name})" if scheme and fmt else (fmt.name if fmt else "an unquantized run")
        )
        raise CheckpointError(
            f"{what}: no checkpoint for {want} and no original to quantize; found only:\n  {listed}\n"
            "choose a scheme of one of these formats, or put the original checkpoint in model.path"
        )
    raise CheckpointError(
        f"{what}: nothing usable: looked for {looked_for} in:\n  "
        + "\n  ".join(looked)
        + "\nset model.path to the model folder, or give the file with "
        + f"{component}_quant.ckpt=<file or folder>"
    )


def _checked_file(component: str, path: Path, fmt: Format | None, scheme: str | None, how: str) -> FoundCheckpoint:
    """One encoder file: its header read and checked against the scheme's format, then recorded."""
    info = inspect_checkpoint(path)
    check_format(info, fmt, component, scheme)
    return _record(component, (path,), info, how)


def find_encoder(
    component: str,
    model_path: str | Path | None,
    fmt: Format | str | None = None,
    ckpt: str | Path | None = None,
    scheme: str | None = None,
) -> FoundCheckpoint:
    """The T5 or CLIP checkpoint: LightX2V's file names, searched in LightX2V's folder order."""
    if component not in ("t5", "clip"):
        raise ValueError(f"find_encoder is for t5 / clip, got {component!r}")
    fmt = _fmt(fmt)
    q_names = [encoder_file_name(component, fmt, ext) for ext in (".pth", ".safetensors")] if fmt else []
    o_names = [encoder_file_name(component, None, ext) for ext in (".pth", ".safetensors")]
    if ckpt is not None:
        ck = Path(ckpt)
        if ck.is_file():
            return _checked_file(component, ck, fmt, scheme, f"given as {component}_quant.ckpt")
        if not ck.is_dir():
            raise CheckpointError(f"{component}: {component}_quant.ckpt={ck} does not exist")
        folders = [ck]
    elif model_path is None:
        raise CheckpointError(
            f"{component}: no checkpoint: model.path is not set and no {component}_quant.ckpt"
        )
    else:
        folders = [Path(model_path) / s if s else Path(model_path) for s in SEARCH_FOLDERS]
    for names, kind in ((q_names, "pre-quantized"), (o_names, "original")):
        for folder in folders:
            for name in names:
                path = folder / name
                if path.is_file():
                    how = f"{kind} file found in {folder}"
                    if kind == "original" and fmt is not None:
                        how += f"; quantized to {fmt.short} while loading"
                    return _checked_file(component, path, fmt, scheme, how)
    looked = [f"{f}/{n}" for n in q_names + o_names for f in folders]
    raise CheckpointError(
        f"{component}: nothing usable: looked for\n  "
        + "\n  ".join(looked)
        + f"\nset model.path to the model folder, or give the file with {component}_quant.ckpt=<file>"
    )


def find_checkpoint(
    component: str,
    model_path: str | Path | None,
    fmt: Format | str | None = None,
    ckpt: str | Path | None = None,
    expert: str | None = None,
    scheme: str | None = None,
) -> FoundCheckpoint:
    """Dispatch to find_dit / find_encoder."""
    if component == "dit":
        return find_dit(model_path, fmt, ckpt, expert, scheme)
    return find_encoder(component, model_path, fmt, ckpt, scheme)
