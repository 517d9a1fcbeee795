"""The device layer under the offload schedule: streams, events, asynchronous copies, device and host memory.

The schedule (schedule.py) talks only to a ``Transport``; ``CudaTransport`` is the real one. Tests drive the
same schedule with a recording fake on the CPU, which is how the stream/event ordering is checked without a
GPU.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

import torch

from lightx2v_quant.offload.layout import aligned_empty, align_up

log = logging.getLogger(__name__)
PAGE = 4096


class Transport:
    """Interface. Streams and events are opaque; copies are enqueued on a stream and return at once."""

    device: torch.device

    def compute_stream(self) -> Any:
        raise NotImplementedError

    def copy_stream(self) -> Any:
        raise NotImplementedError

    def event(self, timing: bool = False) -> Any:
        raise NotImplementedError

    def record(self, event: Any, stream: Any) -> None:
        raise NotImplementedError

    def wait(self, stream: Any, event: Any) -> None:
        """Work queued on ``stream`` after this call starts once ``event`` (as last recorded) completed."""
        raise NotImplementedError

    def copy(self, dst: torch.Tensor, src: torch.Tensor, stream: Any) -> None:
        raise NotImplementedError

    def host_sync(self, event: Any) -> None:
        """Block the calling host thread until ``event`` completed."""
        raise NotImplementedError

    def query(self, event: Any) -> bool:
        raise NotImplementedError

    def elapsed_ms(self, start: Any, end: Any) -> float:
        raise NotImplementedError

    def synchronize(self) -> None:
        raise NotImplementedError

    def alloc_device(self, nbytes: int) -> torch.Tensor:
        raise NotImplementedError

    def alloc_host(self, nbytes: int) -> torch.Tensor:
        """Pageable host bytes on whole pages (pinned later by ``pin`` once filled, so pinning does not double
        the footprint, and no page is shared with another registered range)."""
        return aligned_empty(nbytes, "cpu", align=PAGE)

    def pin(self, host: torch.Tensor) -> None:
        """Page-lock ``host`` in place for asynchronous copies; undone when it is freed or by ``unpin``."""

    def unpin(self, host: torch.Tensor) -> None:
        """Undo ``pin`` now (before the memory is reused)."""

    def peak_memory(self) -> int:
        return 0

    def trace(self, what: str, **info: Any) -> None:
        """Schedule annotations (which unit is in use where); recorded by test doubles, ignored on a GPU."""


class CudaTransport(Transport):
    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"CudaTransport needs a CUDA device, got {self.device}")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self._copy = torch.cuda.Stream(self.device)
        self._pinned: dict[int, weakref.finalize] = {}

    def compute_stream(self) -> torch.cuda.Stream:
        return torch.cuda.current_stream(self.device)

    def copy_stream(self) -> torch.cuda.Stream:
        return self._copy

    def event(self, timing: bool = False) -> torch.cuda.Event:
        return torch.cuda.Event(enable_timing=timing)

    def record(self, event: torch.cuda.Event, stream: torch.cuda.Stream) -> None:
        event.record(stream)

    def wait(self, stream: torch.cuda.Stream, event: torch.cuda.Event) -> None:
        stream.wait_event(event)

    def copy(self, dst: torch.Tensor, src: torch.Tensor, stream: torch.cuda.Stream) -> None:
        with torch.cuda.stream(stream):
            dst.copy_(src, non_blocking=True)

    def host_sync(self, event: torch.cuda.Event) -> None:
        event.synchronize()

    def query(self, event: torch.cuda.Event) -> bool:
        return event.query()

    def elapsed_ms(self, start: torch.cuda.Event, end: torch.cuda.Event) -> float:
        return start.elapsed_time(end)

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def alloc_device(self, nbytes: int) -> torch.Tensor:
        return torch.empty(align_up(nbytes), dtype=torch.uint8, device=self.device)  # cudaMalloc: 512-aligned

    def pin(self, host: torch.Tensor) -> None:
        """cudaHostRegister the exact range: PyTorch's pinned allocator would round 350 MB up to 512 MB."""
        ptr, size = host.data_ptr(), host.numel() * host.element_size()
        if size == 0 or ptr in self._pinned:
            return
        rc = int(torch.cuda.cudart().cudaHostRegister(ptr, size, 0))
        if rc != 0:
            raise RuntimeError(
                f"cudaHostRegister of {size / 1e9:.2f} GB of host memory failed (CUDA error {rc}); the "
                f"machine may limit page-locked memory: free host RAM, or set offload.pin_memory=false "
                f"(slower, no overlap)")
        # Unregister when this tensor object dies (its owner drops it), before its memory can be freed.
        self._pinned[ptr] = weakref.finalize(host, _unregister, ptr)

    def unpin(self, host: torch.Tensor) -> None:
        fin = self._pinned.pop(host.data_ptr(), None)
        if fin is not None:
            fin()

    def peak_memory(self) -> int:
        return torch.cuda.max_memory_allocated(self.device)


def _unregister(ptr: int) -> None:
    try:
        torch.cuda.cudart().cudaHostUnregister(ptr)
    except Exception as exc:  # interpreter shutdown: nothing useful left to do
        log.debug("cudaHostUnregister(%x) failed: %s", ptr, exc)
