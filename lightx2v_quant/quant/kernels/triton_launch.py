"""Replaying a Triton launch without the JIT's per-call work: what keeps small GEMMs from being CPU-bound.

``kernel[grid](*args, **meta)`` binds and specializes every argument, builds a cache key and looks the
compiled kernel up on each call: tens of microseconds of Python, as long as a whole CLIP-sized GEMM on
an H100. A :class:`Replay` keeps the compiled kernel that a first, ordinary launch returned, with its
grid and the arguments that stay fixed (sizes, strides, constexprs), and launches it directly
(``CompiledKernel[grid](*args, stream=...)``, Triton's own entry point for a compiled kernel).

A replay is only valid for arguments that Triton would specialize the same way: same dtypes, same
16-byte alignment of pointers, same integer values. The Gluon GEMMs' TMA descriptors are rebuilt per
call around the new tensors (same block shapes and layouts, :class:`DescriptorReplay`). Callers key their replays on exactly that (M, the
activation's dtype, row stride and alignment, the device) and pass freshly allocated, hence aligned,
buffers; layer tensors are checked once when the replay is made.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

from lightx2v_quant.quant.kernels.triton_quant import INTERPRETING

_RAW_STREAM = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def enabled() -> bool:
    """Replays are on unless LIGHTX2V_QUANT_TRITON_REPLAY=0 (or under the interpreter, which has no
    compiled kernels)."""
    return not INTERPRETING and os.environ.get("LIGHTX2V_QUANT_TRITON_REPLAY", "1") != "0"


def current_stream(device_index: int) -> int:
    """The raw handle of the current CUDA stream (what Triton's launcher wants)."""
    if _RAW_STREAM is not None:
        return _RAW_STREAM(device_index)
    return torch.cuda.current_stream(device_index).cuda_stream


class Replay:
    """One kernel with a fixed grid; per call only the leading ``n_dynamic`` arguments change."""

    __slots__ = ("_run", "_tail", "label")

    def __init__(self, run: Callable, tail: tuple, label: str) -> None:
        self._run = run
        self._tail = tail
        self.label = label

    def __call__(self, stream: int, *dynamic) -> None:
        self._run(*dynamic, *self._tail, stream=stream)


class DescriptorReplay(Replay):
    """A replay some of whose dynamic arguments are TMA descriptors (the Gluon GEMMs'): each call rebuilds
    them around the tensors it is given in their places, with the block shapes and shared-memory layouts
    of the captured launch (the compiled kernel is specialized on those, not on the tensors' addresses)."""

    __slots__ = ("_descs",)

    def __init__(self, run: Callable, tail: tuple, label: str, dynamic: list) -> None:
        super().__init__(run, tail, label)
        self._descs = [
            (type(d), list(d.block_shape), d.layout) if _is_gluon_descriptor(d) else None for d in dynamic
        ]

    def __call__(self, stream: int, *dynamic) -> None:
        args = [t if d is None else d[0].from_tensor(t, d[1], d[2]) for d, t in zip(self._descs, dynamic)]
        self._run(*args, *self._tail, stream=stream)


def capture(compiled, kernel, grid: tuple, args: tuple, meta: dict, n_dynamic: int) -> Replay | None:
    """A replay of ``kernel[grid](*args, **meta)``, whose result ``compiled`` is; None when this Triton
    returned no compiled kernel (interpreter) or the launch used arguments a replay cannot hold. Gluon TMA
    descriptors among the dynamic arguments make a :class:`DescriptorReplay` (called with the tensors
    instead)."""
    if compiled is None or not hasattr(compiled, "__getitem__"):
        return None
    names = list(kernel.arg_names)
    try:
        full = list(args) + [meta[name] for name in names[len(args) :]]
    except KeyError:  # a parameter left to its default: not worth supporting
        return None
    dynamic = full[:n_dynamic]
    if any(not isinstance(a, torch.Tensor) and not _is_gluon_descriptor(a) for a in dynamic) or any(
        isinstance(a, torch.Tensor) or hasattr(a, "base") for a in full[n_dynamic:]
    ):
        return None  # dynamic part must be tensors or descriptors; fixed part must hold neither
    grid3 = tuple(grid) + (1,) * (3 - len(grid))  # the compiled kernel's runner reads three dimensions
    name = getattr(getattr(kernel, "fn", kernel), "__name__", "?")
    if any(_is_gluon_descriptor(a) for a in dynamic):
        return DescriptorReplay(compiled[grid3], tuple(full[n_dynamic:]), name, dynamic)
    return Replay(compiled[grid3], tuple(full[n_dynamic:]), name)


def _is_gluon_descriptor(arg) -> bool:
    """A host-side Gluon TensorDescriptor (base tensor, block shape, NVMMA shared layout)."""
    return isinstance(getattr(arg, "base", None), torch.Tensor) and hasattr(arg, "layout") and hasattr(
        arg, "block_shape"
    )


def aligned(*tensors: torch.Tensor | None) -> bool:
    """Every tensor starts 16-byte aligned (what Triton specializes pointers on)."""
    return all(t is None or t.data_ptr() % 16 == 0 for t in tensors)


@dataclass
class Launched:
    """What one launch ran: enough to replay it (``triton_launch.capture``)."""

    kernel: object
    grid: tuple
    args: tuple
    meta: dict
    compiled: object  # Triton's CompiledKernel (None under the interpreter)

    def replay(self, n_dynamic: int) -> Replay | None:
        return capture(self.compiled, self.kernel, self.grid, self.args, self.meta, n_dynamic)


def run_kernel(kernel, grid: tuple, args: tuple, meta: dict, warmup: bool):
    """``kernel[grid](*args, **meta)`` as a :class:`Launched` record, or (warmup) only compile it."""
    if warmup:
        return kernel.warmup(*args, grid=grid, **meta)
    return Launched(kernel, grid, args, meta, kernel[grid](*args, **meta))
