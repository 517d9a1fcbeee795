"""Disk offload: units' bytes read on demand from safetensors files by worker threads into a small ring of
pinned host buffers, so host RAM holds a few blocks, not the model.

Files: LightX2V's per-block layout (``non_block.safetensors`` + ``block_{i}.safetensors``, converter
``--save_by_block``), one ``.safetensors`` file, or shards with an index. Tensors are read with ``os.preadv``
straight into the pinned buffer at their place in the unit's arena (no mmap: the page cache stays out of this
process's RSS, and there is no intermediate copy). A tensor stored in another float dtype than the model
holds (an fp32 norm for a bf16 model) is converted on the way. Quantized tensors must already be in the
scheme's format.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from lightx2v_quant.checkpoints.reader import (
    CheckpointError,
    read_safetensors_header,
    safetensors_dtype,
    safetensors_shards,
)
from lightx2v_quant.offload.layout import UnitLayout
from lightx2v_quant.offload.schedule import UnitStore
from lightx2v_quant.offload.transport import Transport

BLOCK_FILE = re.compile(r"^block_(\d+)\.safetensors$")
NON_BLOCK_FILE = "non_block.safetensors"


@dataclass(frozen=True)
class FileTensor:
    path: Path
    offset: int  # absolute byte offset of the tensor's data in the file
    nbytes: int
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def dit_files(path: str | Path) -> list[Path]:
    """The safetensors files of a DIT checkpoint: a per-block folder, one file, or an index of shards."""
    p = Path(path)
    if p.is_dir():
        blocks = sorted((f for f in p.iterdir() if BLOCK_FILE.match(f.name)),
                        key=lambda f: int(BLOCK_FILE.match(f.name).group(1)))
        if (p / NON_BLOCK_FILE).is_file() and blocks:
            return [p / NON_BLOCK_FILE, *blocks]
        singles = sorted(p.glob("*.safetensors"))
        indexes = sorted(p.glob("*.safetensors.index.json"))
        if len(singles) == 1:
            return singles
        if len(indexes) == 1:  # e.g. the official diffusion_pytorch_model.safetensors.index.json + shards
            return safetensors_shards(indexes[0])
        raise CheckpointError(
            f"offload=disk: {p} holds neither {NON_BLOCK_FILE} + block_<i>.safetensors, nor one .safetensors "
            f"file, nor one shard index ({len(singles)} files, {len(indexes)} indexes found); convert the "
            f"DIT with the converter's per-block output")
    if p.name.endswith(".index.json"):
        return safetensors_shards(p)
    if p.name.endswith(".safetensors") and p.is_file():
        return [p]
    raise CheckpointError(f"offload=disk reads safetensors; {p} is not a .safetensors file, an index or a "
                          f"folder of per-block files (convert .pth checkpoints to safetensors first)")


def file_index(paths: list[Path],
               key_map: Callable[[str], str | None] | None = None) -> dict[str, FileTensor]:
    """model key -> where its bytes are, from the safetensors headers only (no tensor data is read)."""
    index: dict[str, FileTensor] = {}
    for path in paths:
        header, data_start = read_safetensors_header(path)  # also rejects corrupt and truncated files
        for fkey, info in header.items():
            key = key_map(fkey) if key_map else fkey
            if key is None:
                continue
            dtype = safetensors_dtype(info["dtype"], path, fkey)
            start, end = info["data_offsets"]
            if key in index:
                raise CheckpointError(f"tensor {key!r} is in both {index[key].path} and {path}")
            index[key] = FileTensor(path, data_start + start, end - start, dtype, tuple(info["shape"]))
    return index


@dataclass
class FileRegion:
    offset: int  # in the unit arena
    src: FileTensor
    dtype: torch.dtype  # what the model holds
    qualname: str

    @property
    def direct(self) -> bool:
        return self.src.dtype == self.dtype

    @property
    def nbytes(self) -> int:
        return self.src.numel * torch.empty((), dtype=self.dtype).element_size()


@dataclass
class DiskUnit:
    """How to produce one unit's arena bytes: regions read from files, the rest (kernel-derived) from host."""

    name: str
    nbytes: int
    files: list[FileRegion]
    host: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (arena offset, host uint8 bytes)

    @property
    def host_bytes(self) -> int:
        return sum(b.numel() for _, b in self.host)


def plan_disk_unit(layout: UnitLayout, index: dict[str, FileTensor]) -> DiskUnit:
    """Match each region of the layout to checkpoint bytes; regions no file holds keep theirs on the host."""
    files: list[FileRegion] = []
    host: list[tuple[int, torch.Tensor]] = []
    for region in layout.regions:
        owner = region.owner()
        ft = index.get(owner.qualname) if owner is not None else None
        if ft is not None:
            problem = tensor_mismatch(owner.qualname, ft, owner.dtype, owner.numel)
            if problem:
                raise CheckpointError(problem)
            files.append(FileRegion(region.offset, ft, owner.dtype, owner.qualname))
            continue
        names = ", ".join(r.qualname for r, _ in region.members)
        persistent = [r.qualname for r, _ in region.members if r.persistent]
        if persistent:
            raise CheckpointError(f"offload=disk: {persistent[0]} is not in the checkpoint files "
                                  f"({len(index)} tensors indexed); is this the right checkpoint?")
        if region.source is None or region.source.is_meta:
            raise RuntimeError(f"offload=disk: {names} (computed, not in the checkpoint) has no data to keep")
        host.append((region.offset, region.source.to("cpu", copy=True)))
    return DiskUnit(layout.name, layout.nbytes, files, host)


def tensor_mismatch(key: str, ft: FileTensor, dtype: torch.dtype, numel: int) -> str | None:
    if ft.numel != numel:
        return (f"{key} in {ft.path} has shape {list(ft.shape)} ({ft.numel} elements); "
                f"the model expects {numel}")
    # fp8 / int8 / packed bytes are never converted, only read as stored
    floats = ft.dtype.is_floating_point and dtype.is_floating_point
    if ft.dtype != dtype and not (floats and min(ft.dtype.itemsize, dtype.itemsize) > 1):
        hint = ("; the file is quantized in another format or not quantized: offload=disk reads quantized "
                "weights as stored, so convert the checkpoint to the scheme's format first "
                "(per-block output)")
        return f"{key} in {ft.path} is {ft.dtype}, the model holds {dtype}{hint}"
    return None


class FileReader:
    """Positional reads (os.preadv, thread-safe, GIL released) of checkpoint tensors into host memory."""

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}
        self._lock = threading.Lock()
        self.bytes_read = 0
        self.read_s = 0.0
        weakref.finalize(self, _close_all, self._fds)  # dropped without close(): still no leaked descriptors

    def fd(self, path: Path) -> int:
        with self._lock:
            fd = self._fds.get(path)
            if fd is None:
                fd = self._fds[path] = os.open(path, os.O_RDONLY)
            return fd

    def read_into(self, ft: FileTensor, start: int, dst: torch.Tensor) -> None:
        """Read ``dst.numel()`` bytes of ``ft`` from byte ``start`` into the uint8 host tensor ``dst``."""
        t0 = time.perf_counter()
        view = memoryview(dst.numpy()).cast("B")
        fd, pos, done = self.fd(ft.path), ft.offset + start, 0
        while done < len(view):
            got = os.preadv(fd, [view[done:]], pos + done)
            if got <= 0:
                raise CheckpointError(f"{ft.path}: unexpected end of file reading at byte {pos + done}")
            done += got
        with self._lock:
            self.bytes_read += done
            self.read_s += time.perf_counter() - t0

    def read_region(self, fr: FileRegion, dst: torch.Tensor) -> None:
        """The region's tensor, converted to the model's dtype, into ``dst`` (uint8, exactly its bytes)."""
        if fr.direct:
            self.read_into(fr.src, 0, dst)
            return
        raw = torch.empty(fr.src.nbytes, dtype=torch.uint8)
        self.read_into(fr.src, 0, raw)
        dst.view(fr.dtype).copy_(raw.view(fr.src.dtype))

    def read_unit(self, unit: DiskUnit, dst: torch.Tensor) -> None:
        for fr in unit.files:
            self.read_region(fr, dst[fr.offset: fr.offset + fr.nbytes])
        for offset, data in unit.host:
            dst[offset: offset + data.numel()].copy_(data)

    def close(self) -> None:
        _close_all(self._fds)


def _close_all(fds: dict[Path, int]) -> None:
    for fd in fds.values():
        os.close(fd)
    fds.clear()


class DiskStore(UnitStore):
    """A ring of R pinned host buffers filled by a thread pool; unit g uses buffer g % R.

    A read into buffer h may start only when the host->device copy out of h's previous unit has run: the
    worker waits on ``host_free[h]``, recorded on the copy stream right after that copy was queued.
    """

    def __init__(self, transport: Transport, units: list[DiskUnit], buffers: int, workers: int,
                 pin: bool) -> None:
        if buffers < 1 or workers < 1:
            raise ValueError(f"offload=disk needs >= 1 host buffer and >= 1 worker, got {buffers} and "
                             f"{workers}")
        self.t = transport
        self.units = units
        self.depth = buffers
        self.buffer_bytes = max(u.nbytes for u in units)
        self.backing = transport.alloc_host(self.buffer_bytes * buffers)
        self.backing.zero_()  # touch the pages now: the ring is the steady host footprint
        if pin:
            transport.pin(self.backing)
        self.ring = [self.backing[i * self.buffer_bytes:(i + 1) * self.buffer_bytes] for i in range(buffers)]
        self.host_free = [transport.event() for _ in range(buffers)]
        self.reader = FileReader()
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="offload-disk")
        self.futures: dict[int, Future] = {}

    @property
    def host_bytes(self) -> int:
        return self.backing.numel() + sum(u.host_bytes for u in self.units)

    def request(self, g: int, unit: int) -> None:
        h = g % self.depth
        self.t.trace("request", g=g, unit=unit, buffer=h)
        self.futures[g] = self.pool.submit(self._read, g, unit, h)

    def _read(self, g: int, unit: int, h: int) -> None:
        self.t.host_sync(self.host_free[h])
        self.t.trace("host_write", g=g, unit=unit, buffer=h)
        self.reader.read_unit(self.units[unit], self.ring[h])
        self.t.trace("host_written", g=g, unit=unit, buffer=h)

    def acquire(self, g: int, unit: int) -> torch.Tensor:
        fut = self.futures.pop(g, None)
        if fut is None:
            raise RuntimeError(f"disk offload: unit {unit} (sequence {g}) was never requested")
        fut.result()
        self.t.trace("acquire", g=g, unit=unit, buffer=g % self.depth)
        return self.ring[g % self.depth]

    def release(self, g: int, unit: int, stream: Any) -> None:
        self.t.trace("host_released", g=g, unit=unit, buffer=g % self.depth, stream=stream)
        self.t.record(self.host_free[g % self.depth], stream)

    def drain(self) -> None:
        pending, self.futures = self.futures, {}
        errors = []
        for fut in pending.values():
            try:
                fut.result()
            except Exception as exc:  # a failed read that is no longer needed is still a broken file
                errors.append(exc)
        if errors:
            raise errors[0]

    def close(self) -> None:
        self.drain()
        self.pool.shutdown(wait=True)
        self.reader.close()
        self.t.unpin(self.backing)


def fill_from_disk(unit: DiskUnit, device_arena: torch.Tensor, reader: FileReader, staging: torch.Tensor,
                   transport: Transport) -> None:
    """Synchronously load a whole unit (the non-block part) to the device through a host staging buffer.

    Used once per sampling loop, before the pipeline starts, so the ring buffers are free to stage through.
    """
    comp = transport.compute_stream()
    cap = staging.numel()
    jobs: list[tuple[int, Callable[[torch.Tensor], object], int]] = []  # (arena offset, fill(staging), bytes)
    for fr in unit.files:
        size = torch.empty((), dtype=fr.dtype).element_size()
        step = max(cap // size, 1)
        for first in range(0, fr.src.numel, step):
            count = min(step, fr.src.numel - first)
            jobs.append((fr.offset + first * size, _chunk_reader(reader, fr, first, count), count * size))
    for offset, data in unit.host:
        for first in range(0, data.numel(), cap):
            chunk = data[first: first + cap]
            jobs.append((offset + first, lambda dst, c=chunk: dst.copy_(c), chunk.numel()))
    for offset, fill, nbytes in jobs:
        done = transport.event()
        fill(staging[:nbytes])
        transport.copy(device_arena[offset: offset + nbytes], staging[:nbytes], comp)
        transport.record(done, comp)
        transport.host_sync(done)  # the staging bytes are rewritten by the next chunk


def _chunk_reader(reader: FileReader, fr: FileRegion, first: int,
                  count: int) -> Callable[[torch.Tensor], None]:
    def fill(dst: torch.Tensor) -> None:
        src_size = fr.src.dtype.itemsize
        if fr.direct:
            reader.read_into(fr.src, first * src_size, dst)
            return
        raw = torch.empty(count * src_size, dtype=torch.uint8)
        reader.read_into(fr.src, first * src_size, raw)
        dst.view(fr.dtype).copy_(raw.view(fr.src.dtype))
    return fill


def save_by_block(model: torch.nn.Module, folder: str | Path, attr: str = "blocks") -> list[Path]:
    """Write ``model``'s state dict as ``non_block.safetensors`` + ``block_{i}.safetensors`` (LightX2V's
    per-block layout), one block in host memory at a time. Returns the files written."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    groups: dict[str, dict[str, torch.Tensor]] = {}
    pattern = re.compile(rf"^{re.escape(attr)}\.(\d+)\.")
    for key, t in model.state_dict().items():
        m = pattern.match(key)
        groups.setdefault(f"block_{m.group(1)}" if m else "non_block", {})[key] = t
    written = []
    for name, tensors in groups.items():
        path = folder / f"{name}.safetensors"
        save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, str(path))
        written.append(path)
    return written
