"""Read tensors from checkpoint files one at a time: safetensors (a file, shards with an index) and .pth.

Nothing here loads a whole model into memory at once: safetensors are read tensor by tensor and
``.pth`` files are memory-mapped. Every failure names the file and what is wrong with it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

import torch

SAFETENSORS_SUFFIX = ".safetensors"
TORCH_SUFFIXES = (".pth", ".pt", ".bin")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file(s) and the fix."""


class TensorSource:
    """A read-only mapping key -> tensor over one or more files, loading lazily."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def keys(self) -> list[str]:
        raise NotImplementedError

    def get(self, key: str) -> torch.Tensor:
        raise NotImplementedError

    def where(self, key: str) -> Path:
        raise NotImplementedError

    def meta(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:
        """Shape and dtype without reading the data (where the format allows)."""
        t = self.get(key)
        return tuple(t.shape), t.dtype

    def __contains__(self, key: object) -> bool:
        return key in set(self.keys())

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def describe(self) -> str:
        return ", ".join(str(p) for p in self.paths)


SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
}


def safetensors_dtype(tag: str, path: Path, key: str) -> torch.dtype:
    try:
        return SAFETENSORS_DTYPES[tag]
    except KeyError:
        raise CheckpointError(f"{path}: tensor {key} has a dtype this reader does not know ({tag})") from None


class SafetensorsSource(TensorSource):
    def __init__(self, paths: list[Path]) -> None:
        from safetensors import safe_open

        super().__init__(paths)
        self._handles = {}
        self._index: dict[str, Path] = {}
        self._header: dict[str, dict] = {}
        for path in paths:
            if not path.is_file():
                raise CheckpointError(f"checkpoint file {path} does not exist")
            self._header.update({k: dict(v, path=path) for k, v in read_safetensors_header(path)[0].items()})
            try:
                handle = safe_open(str(path), framework="pt", device="cpu")
            except Exception as exc:
                raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); re-download or re-convert it") from exc
            self._handles[path] = handle
            for key in handle.keys():
                if key in self._index:
                    raise CheckpointError(f"tensor {key!r} is in both {self._index[key]} and {path}")
                self._index[key] = path

    def keys(self) -> list[str]:
        return list(self._index)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def where(self, key: str) -> Path:
        return self._index[key]

    def meta(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:
        info = self._header[key]
        return tuple(info["shape"]), safetensors_dtype(info["dtype"], info["path"], key)

    def get(self, key: str) -> torch.Tensor:
        path = self._index[key]
        try:
            return self._handles[path].get_tensor(key)
        except Exception as exc:
            raise CheckpointError(f"cannot read tensor {key!r} from {path} ({exc}); the file may be truncated") from exc


def read_safetensors_header(path: Path) -> tuple[dict[str, dict], int]:
    """(tensor entries of the JSON header, byte offset where the data starts), checking that the file is
    as long as the header says (truncation). Reads the header only."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path} is empty or truncated ({size} bytes); re-download or re-convert it")
        n = int.from_bytes(raw, "little")
        if n <= 0 or 8 + n > size:
            raise CheckpointError(f"{path} has a corrupt safetensors header; re-download or re-convert it")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path} has a corrupt safetensors header ({exc})") from exc
    header.pop("__metadata__", None)
    end = max((info["data_offsets"][1] for info in header.values()), default=0)
    if 8 + n + end > size:
        raise CheckpointError(
            f"{path} is truncated: the header describes {8 + n + end} bytes but the file has {size}; "
            "re-download or re-convert it"
        )
    return header, 8 + n


class TorchSource(TensorSource):
    def __init__(self, path: Path) -> None:
        super().__init__([path])
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {path} does not exist")
        try:
            obj = _torch_load(path)
        except Exception as exc:
            raise CheckpointError(
                f"{path} is not a readable torch checkpoint ({exc}); the file may be truncated or corrupt: "
                "re-download or re-convert it"
            ) from exc
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise CheckpointError(f"{path} does not hold a dict of tensors")
        self._sd: dict[str, torch.Tensor] = obj

    def keys(self) -> list[str]:
        return list(self._sd)

    def __contains__(self, key: object) -> bool:
        return key in self._sd

    def where(self, key: str) -> Path:
        return self.paths[0]

    def meta(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:
        t = self._sd[key]
        return tuple(t.shape), t.dtype

    def get(self, key: str) -> torch.Tensor:
        return self._sd[key]


def _torch_load(path: Path):
    """Memory-mapped load (zip format, torch >= 1.6); files in the legacy pickle format cannot be mapped
    and are read whole instead."""
    import zipfile

    mmap = zipfile.is_zipfile(path)
    return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)


BLOCK_FILE = re.compile(r"block_(\d+)\.safetensors$")
NON_BLOCK_FILE = "non_block.safetensors"


class BlockFilesSource(SafetensorsSource):
    """A per-block checkpoint folder: ``non_block.safetensors`` + ``block_{i}.safetensors``, i = 0..n-1
    (LightX2V's converter ``--save_by_block`` and ours). Headers are read up front; tensors on demand,
    so an offload manager can read one block's tensors at a time."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        blocks = block_files(folder)
        if blocks is None:
            raise CheckpointError(f"{folder} is not a per-block checkpoint folder (no {NON_BLOCK_FILE})")
        self.num_blocks = len(blocks)
        super().__init__([folder / NON_BLOCK_FILE, *blocks])
        self._block_keys: list[list[str]] = [[] for _ in blocks]
        self._non_block_keys: list[str] = []
        position = {p: i for i, p in enumerate(blocks)}
        for key, path in self._index.items():
            if path in position:
                self._block_keys[position[path]].append(key)
            else:
                self._non_block_keys.append(key)

    def block_keys(self, i: int) -> list[str]:
        """Keys stored in ``block_{i}.safetensors``."""
        return list(self._block_keys[i])

    def non_block_keys(self) -> list[str]:
        return list(self._non_block_keys)

    def read_block(self, i: int) -> dict[str, torch.Tensor]:
        return {k: self.get(k) for k in self._block_keys[i]}

    def describe(self) -> str:
        return f"{self.folder} (per-block: {NON_BLOCK_FILE} + {self.num_blocks} block files)"


def block_files(folder: Path) -> list[Path] | None:
    """``block_0..n-1.safetensors`` of a per-block folder in order; None if it has no non_block file.
    A gap in the numbering is an error (a missing block file)."""
    if not (folder / NON_BLOCK_FILE).is_file():
        return None
    found = {}
    for p in folder.iterdir():
        m = BLOCK_FILE.fullmatch(p.name)
        if m:
            found[int(m.group(1))] = p
    missing = [i for i in range(max(found, default=-1) + 1) if i not in found]
    if missing:
        raise CheckpointError(
            f"per-block checkpoint {folder} lacks " + ", ".join(f"block_{i}.safetensors" for i in missing[:8])
            + ": the conversion was incomplete; re-convert it"
        )
    return [found[i] for i in sorted(found)]


def safetensors_shards(index_file: Path) -> list[Path]:
    """The shard files named by a ``*.safetensors.index.json``, in order of first appearance."""
    try:
        weight_map = json.loads(index_file.read_text())["weight_map"]
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{index_file} is not a valid safetensors index ({exc})") from exc
    shards: list[Path] = []
    for name in weight_map.values():
        p = index_file.parent / name
        if p not in shards:
            shards.append(p)
    missing = [str(p) for p in shards if not p.is_file()]
    if missing:
        raise CheckpointError(f"{index_file} names shard files that are missing: {', '.join(missing)}")
    return shards


def open_checkpoint(path: str | Path | list[str | Path]) -> TensorSource:
    """Open a checkpoint: a .safetensors file, an index .json of shards, a list of shards, a per-block
    folder (non_block.safetensors + block_{i}.safetensors) or a .pth file."""
    if isinstance(path, list):
        paths = [Path(p) for p in path]
        if all(p.name.endswith(SAFETENSORS_SUFFIX) for p in paths):
            return SafetensorsSource(paths)
        raise CheckpointError(f"a list of checkpoint files must all be .safetensors: {paths}")
    p = Path(path)
    if p.is_dir():
        if (p / NON_BLOCK_FILE).is_file():
            return BlockFilesSource(p)
        raise CheckpointError(
            f"{p} is a folder; give a file, an index .json or a per-block folder (other folders are "
            "searched by the checkpoint discovery)"
        )
    if p.name.endswith(".index.json"):
        return SafetensorsSource(safetensors_shards(p))
    if p.name.endswith(SAFETENSORS_SUFFIX):
        return SafetensorsSource([p])
    if p.suffix in TORCH_SUFFIXES:
        return TorchSource(p)
    raise CheckpointError(f"{p}: unknown checkpoint type (expected .safetensors, .safetensors.index.json, .pth or .pt)")
