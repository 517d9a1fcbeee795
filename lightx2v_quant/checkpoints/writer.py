"""Write checkpoints one tensor at a time: safetensors (streamed), .pth, per-block sets, atomically.

The safetensors header is planned from shapes and dtypes before any data exists, so a converter holds
one tensor in memory at a time; the bytes equal what ``safetensors.torch.save_file`` writes for the
same tensors (same order, no metadata). Every file appears under its final name only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch

from lightx2v_quant.checkpoints.reader import read_safetensors_header, safetensors_dtype


# safetensors' dtype tags, in the order of its Dtype enum: save_file sorts tensors by this order
# (descending), then by name.
_ST_ORDER: tuple[tuple[torch.dtype, str], ...] = (
    (torch.bool, "BOOL"),
    (torch.uint8, "U8"),
    (torch.int8, "I8"),
    (torch.float8_e5m2, "F8_E5M2"),
    (torch.float8_e4m3fn, "F8_E4M3"),
    (torch.int16, "I16"),
    (torch.uint16, "U16"),
    (torch.float16, "F16"),
    (torch.bfloat16, "BF16"),
    (torch.int32, "I32"),
    (torch.uint32, "U32"),
    (torch.float32, "F32"),
    (torch.float64, "F64"),
    (torch.int64, "I64"),
    (torch.uint64, "U64"),
)
ST_DTYPE_TAG = {dt: tag for dt, tag in _ST_ORDER}
_ST_RANK = {dt: i for i, (dt, _) in enumerate(_ST_ORDER)}
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"


@dataclass(frozen=True)
class TensorPlan:
    """One tensor to be written: its key, shape and dtype (known before its data)."""

    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * _element_size(self.dtype)


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a CPU tensor, without a copy when it is contiguous."""
    flat = t.detach().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


class SafetensorsWriter:
    """A safetensors file written tensor by tensor, in any order, from a plan made up front."""

    def __init__(self, path: Path, plan: Sequence[TensorPlan]) -> None:
        missing = [p.key for p in plan if p.dtype not in ST_DTYPE_TAG]
        if missing:
            raise ValueError(f"dtypes safetensors cannot store: {missing}")
        keys = [p.key for p in plan]
        if len(set(keys)) != len(keys):
            raise ValueError("a tensor key is planned twice")
        ordered = sorted(plan, key=lambda p: (-_ST_RANK[p.dtype], p.key))
        header: dict[str, dict] = {}
        self._slots: dict[str, tuple[TensorPlan, int]] = {}
        offset = 0
        for p in ordered:
            header[p.key] = {
                "dtype": ST_DTYPE_TAG[p.dtype],
                "shape": list(p.shape),
                "data_offsets": [offset, offset + p.nbytes],
            }
            self._slots[p.key] = (p, offset)
            offset += p.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors pads it
        self._data_start = 8 + len(raw)
        self.path = path
        self.size = self._data_start + offset
        self._written: set[str] = set()
        self._fh = path.open("wb")
        self._fh.write(len(raw).to_bytes(8, "little"))
        self._fh.write(raw)
        self._fh.truncate(self.size)

    def write(self, key: str, tensor: torch.Tensor) -> None:
        plan, offset = self._slots[key]
        if tuple(tensor.shape) != plan.shape or tensor.dtype != plan.dtype:
            raise ValueError(
                f"{key}: planned {plan.dtype} {list(plan.shape)}, got {tensor.dtype} {list(tensor.shape)}"
            )
        if key in self._written:
            raise ValueError(f"{key} written twice")
        self._fh.seek(self._data_start + offset)
        if plan.nbytes:
            self._fh.write(tensor_bytes(tensor.cpu()))
        self._written.add(key)

    def close(self) -> None:
        left = [k for k in self._slots if k not in self._written]
        self._fh.close()
        if left:
            raise ValueError(f"{self.path}: {len(left)} planned tensor(s) never written, e.g. {left[:5]}")

    def abort(self) -> None:
        self._fh.close()


@contextmanager
def atomic_file(final: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; it becomes ``final`` only if the block succeeds."""
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; pass --overwrite to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.partial-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_safetensors(path: Path, tensors: Mapping[str, torch.Tensor], overwrite: bool = False) -> None:
    """Write a small in-memory dict (tests, index-free outputs) atomically."""
    with atomic_file(path, overwrite) as tmp:
        plan = [TensorPlan(k, tuple(t.shape), t.dtype) for k, t in tensors.items()]
        w = SafetensorsWriter(tmp, plan)
        try:
            for k, t in tensors.items():
                w.write(k, t)
        except BaseException:
            w.abort()
            raise
        w.close()


def safetensors_to_pth(st_path: Path, pth_path: Path, key_order: Sequence[str]) -> None:
    """Re-write a safetensors file as a ``torch.save`` dict in ``key_order`` without loading it:
    each tensor is a copy-on-write memory map of its bytes, so memory stays ~ one page cache."""
    header, data_start = read_safetensors_header(st_path)
    out: dict[str, torch.Tensor] = {}
    for key in key_order:
        info = header[key]
        start, end = info["data_offsets"]
        dtype = safetensors_dtype(info["dtype"], st_path, key)
        if end == start:
            out[key] = torch.empty(info["shape"], dtype=dtype)
            continue
        raw = np.memmap(st_path, dtype=np.uint8, mode="c", offset=data_start + start, shape=(end - start,))
        out[key] = torch.from_numpy(raw).view(dtype).reshape(info["shape"])
    torch.save(out, pth_path)


def block_file_name(block: int | None) -> str:
    return "non_block.safetensors" if block is None else f"block_{block}.safetensors"


def write_index(path: Path, weight_map: Mapping[str, str], total_size: int) -> None:
    """A ``*.safetensors.index.json`` as diffusers / LightX2V's converter write it (total_size = the
    tensors' bytes)."""
    data = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    path.write_text(json.dumps(data, indent=2) + "\n")


def move_into(files: Sequence[Path], folder: Path, overwrite: bool, stale: Sequence[Path] = ()) -> None:
    """Move finished files from a temporary folder into ``folder`` (last one last: put the index there).

    ``stale`` files of an older checkpoint in ``folder`` (e.g. surplus ``block_{i}`` files) are removed
    when overwriting.
    """
    clash = [folder / f.name for f in files if (folder / f.name).exists()]
    if clash and not overwrite:
        raise FileExistsError(f"{', '.join(map(str, clash))} exist(s); pass --overwrite to replace")
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        os.replace(f, folder / f.name)
    for s in stale:
        if s.exists():
            s.unlink()


@contextmanager
def temporary_folder(beside: Path) -> Iterator[Path]:
    """A scratch folder on the same file system as ``beside`` (so renames out of it are atomic)."""
    beside.mkdir(parents=True, exist_ok=True)
    tmp = beside / f".convert-partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
