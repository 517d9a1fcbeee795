"""Byte layouts of offload units: a unit's tensors (any mix of dtypes, shapes, strides, aliases) packed into
one flat uint8 arena, and the views that make a module compute from an arena at a given place.

Why one flat buffer per unit (and per GPU slot) rather than one buffer per tensor: a block may hold fp8 /
int8 / uint8 weights, fp32 scales, bf16 biases and norms, kernel-derived re-layouts, in any combination, and
two blocks need not look alike. Bytes do not care: a unit is one host range, a transfer is ONE copy of that
range into ONE preallocated device slot, and the module's tensors become strided views into it. Tensors that
share memory (a kernel's view of a weight, a scale reshaped in place) share it in the arena too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn

ALIGN = 256  # byte alignment of every region in an arena (GEMM kernels want >= 16; cudaMalloc gives 256)
Binding = list[tuple[dict, str, torch.Tensor]]  # (module._parameters or _buffers, name, value) to assign


def align_up(n: int, a: int = ALIGN) -> int:
    return (n + a - 1) // a * a


@dataclass
class TensorRef:
    """One registered tensor slot of a module (a parameter or a buffer) and the geometry of its tensor."""

    qualname: str  # e.g. "blocks.3.self_attn.q.weight"
    container: dict  # the module's _parameters or _buffers dict
    name: str
    is_param: bool
    persistent: bool  # in the state dict (a checkpoint holds it) vs. a kernel-derived / computed buffer
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    requires_grad: bool = False

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def extent_bytes(self) -> int:
        """Bytes from the first to one past the last element addressed by the (strided) view."""
        if self.numel == 0:
            return 0
        last = sum((s - 1) * st for s, st in zip(self.shape, self.stride))
        return (last + 1) * self.itemsize

    def is_dense(self) -> bool:
        """Contiguous in row-major order (its bytes are exactly the bytes a checkpoint stores)."""
        dense = self.extent_bytes() == self.numel * self.itemsize
        return dense and self.stride == _contiguous_strides(self.shape)


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(strides))


@dataclass
class Region:
    """A byte range of one source storage holding one tensor or several overlapping (aliasing) ones."""

    offset: int  # where the range starts in the unit's arena
    nbytes: int
    members: list[tuple[TensorRef, int]]  # (tensor, byte offset of its first element inside the region)
    source: torch.Tensor | None = None  # uint8 view of the original bytes; dropped once packed

    def owner(self) -> TensorRef | None:
        """The single dense persistent tensor that IS this region (so a checkpoint can supply its bytes)."""
        for ref, rel in self.members:
            if ref.persistent and rel == 0 and ref.is_dense() and ref.numel * ref.itemsize == self.nbytes:
                return ref
        return None


@dataclass
class UnitLayout:
    name: str
    refs: list[TensorRef]
    regions: list[Region]
    nbytes: int  # arena size, a multiple of ALIGN
    empties: list[TensorRef] = field(default_factory=list)  # zero-size tensors: no bytes, still need a view

    def views(self, arena: torch.Tensor) -> Binding:
        """Assignments that make the unit's modules use ``arena`` (uint8, >= nbytes, 256-aligned start)."""
        if arena.dtype != torch.uint8 or arena.dim() != 1 or arena.numel() < self.nbytes:
            raise ValueError(f"{self.name}: arena must be a 1-D uint8 tensor of >= {self.nbytes} bytes")
        if arena.data_ptr() % ALIGN:
            raise ValueError(f"{self.name}: arena must start on a {ALIGN}-byte address (use aligned_empty)")
        base = arena.storage_offset()  # bytes from the storage start (itself >= 64-byte aligned)
        typed: dict[torch.dtype, torch.Tensor] = {}
        binding: Binding = []
        for region in self.regions:
            for ref, rel in region.members:
                at = base + region.offset + rel
                if at % ref.itemsize:
                    raise ValueError(f"{ref.qualname}: byte offset {at} is not a multiple of its item size")
                if ref.dtype not in typed:
                    one = ref.itemsize == 1
                    typed[ref.dtype] = arena.view(ref.dtype) if one else _typed(arena, ref.dtype)
                view = torch.as_strided(typed[ref.dtype], ref.shape, ref.stride, at // ref.itemsize)
                binding.append((ref.container, ref.name, _wrap(ref, view)))
        for ref in self.empties:
            empty = torch.empty(ref.shape, dtype=ref.dtype, device=arena.device)
            binding.append((ref.container, ref.name, _wrap(ref, empty)))
        return binding

    def meta_views(self) -> Binding:
        """Placeholders on the meta device (the unit's weights live nowhere in memory: disk offload)."""
        return [(r.container, r.name,
                 _wrap(r, torch.empty_strided(r.shape, r.stride, dtype=r.dtype, device="meta")))
                for r in self.refs]

    def pack(self, arena: torch.Tensor) -> None:
        """Copy every region's original bytes into ``arena`` (host or device uint8) and drop the sources."""
        for region in self.regions:
            if region.source is None:
                raise RuntimeError(f"{self.name}: region at {region.offset} has no source bytes left to pack")
            if region.source.is_meta:
                name = region.members[0][0].qualname
                raise RuntimeError(f"{self.name}: {name} is on the meta device (no data)")
            arena[region.offset: region.offset + region.nbytes].copy_(region.source)
            region.source = None

    def drop_sources(self) -> None:
        for region in self.regions:
            region.source = None


def aligned_empty(nbytes: int, device: torch.device | str = "cpu", align: int = ALIGN) -> torch.Tensor:
    """A 1-D uint8 tensor of ``nbytes`` starting on an ``align``-byte address, padded to whole ``align`` units
    at the end too (so a page-aligned host range shares no page with another allocation)."""
    size = align_up(max(nbytes, 1), align)
    raw = torch.empty(size + align, dtype=torch.uint8, device=device)
    skip = (-raw.data_ptr()) % align
    return raw[skip: skip + size]


def _typed(arena: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The whole storage under ``arena`` viewed as ``dtype`` (offsets are then absolute, in elements)."""
    storage_bytes = arena.untyped_storage().nbytes()
    itemsize = torch.empty((), dtype=dtype).element_size()
    whole = torch.empty(0, dtype=torch.uint8, device=arena.device).set_(
        arena.untyped_storage(), 0, (storage_bytes // itemsize * itemsize,), (1,))
    return whole.view(dtype)


def _wrap(ref: TensorRef, view: torch.Tensor) -> torch.Tensor:
    return nn.Parameter(view, requires_grad=ref.requires_grad) if ref.is_param else view


def apply_binding(binding: Binding) -> None:
    for container, name, value in binding:
        container[name] = value


# -- collecting the tensors of a unit ---------------------------------------------------------------------


def module_refs(module: nn.Module, prefix: str, names: Iterable[str] | None = None,
                recurse: bool = True, seen: set | None = None) -> list[TensorRef]:
    """TensorRefs of ``module``'s parameters and buffers (and its descendants' when ``recurse``).

    ``names`` restricts the module's OWN tensors to those names. A tensor kept in a plain attribute (not
    registered) cannot be moved by offload: that is an error naming it.
    """
    seen = set() if seen is None else seen
    refs: list[TensorRef] = []
    mods = module.named_modules(prefix=prefix) if recurse else [(prefix, module)]
    for mname, mod in mods:
        _check_unregistered(mod, mname)
        own = None if (names is None or mod is not module) else set(names)
        for container, is_param in ((mod._parameters, True), (mod._buffers, False)):
            for name, t in container.items():
                if t is None or (own is not None and name not in own):
                    continue
                key = (id(container), name)
                if key in seen:
                    continue
                seen.add(key)
                persistent = is_param or name not in mod._non_persistent_buffers_set
                refs.append(TensorRef(
                    qualname=f"{mname}.{name}" if mname else name, container=container, name=name,
                    is_param=is_param, persistent=persistent, shape=tuple(t.shape), stride=tuple(t.stride()),
                    dtype=t.dtype, requires_grad=bool(is_param and t.requires_grad)))
    return refs


def _check_unregistered(mod: nn.Module, mname: str) -> None:
    for attr, value in vars(mod).items():
        if isinstance(value, torch.Tensor) and not attr.startswith("_"):
            raise TypeError(
                f"{mname or type(mod).__name__}.{attr} is a tensor kept in a plain attribute; offload moves "
                f"only registered parameters and buffers: register it "
                f"(register_buffer(..., persistent=False))")


def current_tensor(ref: TensorRef) -> torch.Tensor:
    return ref.container[ref.name]


def build_layout(name: str, refs: list[TensorRef]) -> UnitLayout:
    """Group the refs' CURRENT tensors into regions (overlapping byte ranges of a storage); lay them out."""
    groups: dict[tuple, list[tuple[int, int, TensorRef, torch.Tensor]]] = {}
    empties: list[TensorRef] = []
    for ref in refs:
        t = current_tensor(ref)
        if ref.numel == 0:
            empties.append(ref)
            continue
        start = t.storage_offset() * ref.itemsize
        end = start + ref.extent_bytes()
        storage = t.untyped_storage()
        key = ("meta", storage._cdata) if t.is_meta else (t.device.type, t.device.index, storage.data_ptr())
        groups.setdefault(key, []).append((start, end, ref, t))
    raw: list[tuple[int, int, list[tuple[TensorRef, int]], torch.Tensor]] = []
    for members in groups.values():
        members.sort(key=lambda m: (m[0], -m[1]))
        cur: list = []
        cur_start = cur_end = 0
        for start, end, ref, t in members:
            if cur and start < cur_end:
                cur.append((start, ref, t))
                cur_end = max(cur_end, end)
                continue
            if cur:
                raw.append(_region_of(cur, cur_start, cur_end))
            cur, cur_start, cur_end = [(start, ref, t)], start, end
        raw.append(_region_of(cur, cur_start, cur_end))
    regions: list[Region] = []
    cursor = 0
    for start, nbytes, members, source in raw:
        # A lone tensor starts on an ALIGN boundary; aliasing tensors keep their phase within the storage
        # (whose base is >= 64-byte aligned), so every view's offset stays a multiple of its element size.
        phase = 0 if len(members) == 1 else start % ALIGN
        offset = align_up(cursor) + phase
        regions.append(Region(offset, nbytes, members, source))
        cursor = offset + nbytes
    return UnitLayout(name, refs, regions, align_up(cursor), empties)


def _region_of(cur: list, start: int, end: int):
    members = [(ref, s - start) for s, ref, _ in cur]
    t = cur[0][2]
    nbytes = end - start
    if t.is_meta:
        source = torch.empty(nbytes, dtype=torch.uint8, device="meta")
    else:
        source = torch.empty(0, dtype=torch.uint8, device=t.device)
        source.set_(t.untyped_storage(), start, (nbytes,), (1,))
    return start, nbytes, members, source
