"""The prefetch schedule: a ring of K device slots fed on a copy stream while the compute stream runs.

Units run in a fixed cyclic order (block 0..N-1, or every block's phases, forward after forward). Unit number
g of that sequence lives in slot g % K. When unit g becomes current (its first module's forward starts):

1. the compute stream records ``free[slot(g-1)]``: everything that reads unit g-1 is queued before it;
2. the compute stream waits on ``ready[slot(g)]`` (timed: that stall is "time waiting on transfers");
3. unit g's modules are re-pointed at views into its slot (no allocation, no copy);
4. units g+1 .. g+K-1 not yet issued are issued: the copy stream waits on ``free`` of their slot, copies the
   unit's bytes host->device in ONE copy, records ``ready`` (and the store may recycle the host bytes).

Nothing is ever copied device->host: weights are read-only, so a unit leaving a slot is simply re-pointed at
its host copy (or at the meta device when it lives on disk). The last units of a forward prefetch the first
units of the next one, which overlaps with the non-block work between forwards.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from lightx2v_quant.offload.layout import Binding, UnitLayout, apply_binding
from lightx2v_quant.offload.transport import Transport


@dataclass
class TransferStats:
    bytes_moved: int = 0  # host->device bytes issued (prefetches included)
    units_moved: int = 0
    wait_ms: float = 0.0  # compute-stream stall waiting for weights (device events)
    copy_ms: float = 0.0  # copy-stream busy time
    host_wait_s: float = 0.0  # host thread blocked on disk reads
    forwards: int = 0  # times the first unit started
    restarts: int = 0  # units requested out of the expected order (the pipeline was refilled)
    _pending: deque = field(default_factory=deque)  # (kind, start event, end event) not yet resolved

    def add_timing(self, kind: str, start: Any, end: Any) -> None:
        self._pending.append((kind, start, end))

    def resolve(self, transport: Transport, block: bool = False) -> None:
        """Fold finished timing-event pairs into the totals (all of them when ``block``)."""
        while self._pending:
            kind, start, end = self._pending[0]
            if not block and not transport.query(end):
                break
            self._pending.popleft()
            ms = transport.elapsed_ms(start, end)
            if kind == "wait":
                self.wait_ms += ms
            else:
                self.copy_ms += ms


class UnitStore:
    """Where units' bytes come from on the host. Subclasses: pinned host arenas; the disk ring (disk.py)."""

    depth: int = 0  # units beyond the device slots that may be requested ahead

    def request(self, g: int, unit: int) -> None:
        """Unit ``unit`` will be needed as sequence number ``g`` (disk: start reading it)."""

    def acquire(self, g: int, unit: int) -> torch.Tensor:
        """Host uint8 bytes of the unit, ready to copy (may block until read)."""
        raise NotImplementedError

    def release(self, g: int, unit: int, stream: Any) -> None:
        """The copy from the acquired bytes is queued on ``stream``; the bytes may be reused once it ran."""

    def drain(self) -> None:
        """Finish or abandon requests that will not be acquired."""


class PinnedStore(UnitStore):
    """Every unit lives in its own pinned host arena: nothing to read, nothing to recycle."""

    def __init__(self, arenas: list[torch.Tensor]) -> None:
        self.arenas = arenas

    def acquire(self, g: int, unit: int) -> torch.Tensor:
        return self.arenas[unit]


@dataclass
class UnitRuntime:
    layout: UnitLayout
    home: Binding  # where the unit's tensors point when it is not in a slot (host views or meta)
    host: torch.Tensor | None = None  # its packed host arena (model / block / phase)
    disk: Any = None  # its disk.DiskUnit read plan (disk)

    @property
    def nbytes(self) -> int:
        return self.layout.nbytes


class Pipeline:
    def __init__(self, transport: Transport, units: list[UnitRuntime], store: UnitStore, slots: int,
                 stats: TransferStats, timing: bool = True) -> None:
        if slots < 2:
            raise ValueError(f"offload needs >= 2 device slots to overlap copies with compute, got {slots}")
        self.t = transport
        self.units = units
        self.store = store
        self.k = min(slots, len(units)) if len(units) > 1 else 1
        self.stats = stats
        self.timing = timing
        self.active = False
        self.slot_bytes = max(u.nbytes for u in units)

    # -- lifetime ---------------------------------------------------------------------------------------
    def start(self) -> None:
        t = self.t
        with torch.inference_mode(False):
            self.arenas = [t.alloc_device(self.slot_bytes) for _ in range(self.k)]
            self.bindings = [[u.layout.views(a) for a in self.arenas] for u in self.units]
        self.ready = [t.event() for _ in range(self.k)]
        self.free = [t.event() for _ in range(self.k)]
        self.g = -1  # sequence number of the current unit
        self.base = 0  # unit_of(g) = (g - base) % U
        self.current: int | None = None
        self.issued: dict[int, int] = {}  # g -> unit, copies queued but not yet consumed
        self.requested = -1  # highest g requested from the store
        self.active = True

    def stop(self) -> None:
        """Leave every unit at home and free the slots (the compute stream waits for the copies first)."""
        if not self.active:
            return
        t = self.t
        if self.current is not None:
            t.trace("release", unit=self.current, slot=self.g % self.k, stream=t.compute_stream())
            apply_binding(self.units[self.current].home)
        self.store.drain()
        comp = t.compute_stream()
        done = t.event()
        t.record(done, t.copy_stream())
        t.wait(comp, done)  # slot memory is freed in compute-stream order: no copy may still write into it
        t.synchronize()
        self.stats.resolve(t, block=True)
        self.arenas = []
        self.bindings = []
        self.issued.clear()
        self.current = None
        self.active = False

    def unit_of(self, g: int) -> int:
        return (g - self.base) % len(self.units)

    # -- the schedule -----------------------------------------------------------------------------------
    def trigger(self, unit: int) -> None:
        """Unit ``unit`` is about to compute: make it resident and keep the next K-1 units in flight."""
        if not self.active:
            raise RuntimeError("an offloaded block ran outside the offload context: call the model (or the "
                               "handle), wrap the loop in `with handle:`, or call handle.begin() first")
        if unit == self.current:
            return
        t = self.t
        nxt = self.g + 1
        if self.unit_of(nxt) != unit:
            self._restart(unit)
        if unit == 0:
            self.stats.forwards += 1
        comp = t.compute_stream()
        if self.current is not None:
            t.trace("release", unit=self.current, slot=self.g % self.k, stream=comp)
            t.record(self.free[self.g % self.k], comp)
            apply_binding(self.units[self.current].home)
        if nxt not in self.issued:
            self._issue(nxt)
        self.issued.pop(nxt)
        slot = nxt % self.k
        if self.timing:
            e0, e1 = t.event(timing=True), t.event(timing=True)
            t.record(e0, comp)
            t.wait(comp, self.ready[slot])
            t.record(e1, comp)
            self.stats.add_timing("wait", e0, e1)
        else:
            t.wait(comp, self.ready[slot])
        apply_binding(self.bindings[unit][slot])
        t.trace("use", unit=unit, slot=slot, g=nxt, stream=comp)
        self.g, self.current = nxt, unit
        for g2 in range(nxt + 1, nxt + self.k):
            if g2 not in self.issued:
                self._issue(g2)
        self._request_upto(nxt + self.k - 1 + self.store.depth)
        self.stats.resolve(t)

    def _restart(self, unit: int) -> None:
        """The model skipped or repeated units: drop the in-flight plan, continue the cycle from ``unit``."""
        self.store.drain()
        self.issued.clear()
        self.base = self.g + 1 - unit
        self.requested = self.g
        self.stats.restarts += 1

    def _request_upto(self, last: int) -> None:
        while self.requested < last:
            self.requested += 1
            self.store.request(self.requested, self.unit_of(self.requested))

    def _issue(self, g: int) -> None:
        t = self.t
        unit = self.unit_of(g)
        slot = g % self.k
        self._request_upto(g)
        t0 = time.perf_counter()
        host = self.store.acquire(g, unit)
        self.stats.host_wait_s += time.perf_counter() - t0
        cs = t.copy_stream()
        n = self.units[unit].nbytes
        t.wait(cs, self.free[slot])
        t.trace("fill", unit=unit, slot=slot, g=g, stream=cs)
        if self.timing:
            c0, c1 = t.event(timing=True), t.event(timing=True)
            t.record(c0, cs)
            t.copy(self.arenas[slot][:n], host[:n], cs)
            t.record(c1, cs)
            self.stats.add_timing("copy", c0, c1)
        else:
            t.copy(self.arenas[slot][:n], host[:n], cs)
        t.trace("filled", unit=unit, slot=slot, g=g, stream=cs)
        t.record(self.ready[slot], cs)
        self.store.release(g, unit, cs)
        self.issued[g] = unit
        self.stats.bytes_moved += n
        self.stats.units_moved += 1
