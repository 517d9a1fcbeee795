"""A recording CPU stand-in for the CUDA transport, with a happens-before model of streams, events and
threads.

Every stream and host thread is an agent with a vector clock. An operation enqueued on a stream happens after
the stream's previous operations and after everything its issuing thread had already seen complete; a wait
joins the event's clock (as last recorded); a host sync joins it into the thread; acquiring a disk read joins
the reader thread. ``hb(a, b)`` then says whether a real GPU could run ``b`` before ``a`` finished.

``lazy=True`` also defers copy-stream work until something waits for it, so a missing wait makes a block
compute with stale bytes (and the test's output comparison fail) instead of passing by luck.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from lightx2v_quant.offload.layout import aligned_empty
from lightx2v_quant.offload.transport import Transport

COMPUTE, COPY = "compute", "copy"


@dataclass
class Op:
    kind: str
    agent: str  # the stream or host thread it belongs to
    index: int  # its position among the agent's operations
    clock: dict[str, int]
    info: dict[str, Any] = field(default_factory=dict)


class FakeEvent:
    def __init__(self) -> None:
        self.clock: dict[str, int] | None = None  # None: never recorded (a wait on it is a no-op, as in CUDA)
        self.recorded = 0  # records issued; a wait refers to the latest one
        self.completed = 0  # records executed

    @property
    def done(self) -> bool:
        return self.completed >= self.recorded


def _join(a: dict[str, int], b: dict[str, int] | None) -> dict[str, int]:
    out = dict(a)
    for k, v in (b or {}).items():
        if out.get(k, -1) < v:
            out[k] = v
    return out


class FakeTransport(Transport):
    def __init__(self, lazy: bool = False) -> None:
        self.device = torch.device("cpu")
        self.lazy = lazy
        self.lock = threading.RLock()
        self.clocks: dict[str, dict[str, int]] = {}
        self.counts: dict[str, int] = {}
        self.ops: list[Op] = []
        self.pending: list[tuple] = []  # lazy copy-stream work: ("copy", dst, src) / ("record", event, n)
        self.pinned: list[int] = []
        self.written: dict[int, Op] = {}  # g -> host_written op (disk reads)

    # -- clocks -----------------------------------------------------------------------------------------
    def _thread(self) -> str:
        main = threading.current_thread() is threading.main_thread()
        return "main" if main else f"thread-{threading.get_ident()}"

    def _op(self, kind: str, agent: str, base: dict[str, int], **info: Any) -> Op:
        n = self.counts.get(agent, -1) + 1
        self.counts[agent] = n
        clock = _join(self.clocks.get(agent, {}), base)
        clock[agent] = n
        self.clocks[agent] = clock
        op = Op(kind, agent, n, dict(clock), info)
        self.ops.append(op)
        return op

    def _stream_op(self, kind: str, stream: str, **info: Any) -> Op:
        return self._op(kind, stream, self.clocks.get(self._thread(), {}), **info)

    @staticmethod
    def hb(a: Op, b: Op) -> bool:
        return b.clock.get(a.agent, -1) >= a.index

    # -- the Transport interface -----------------------------------------------------------------------
    def compute_stream(self) -> str:
        return COMPUTE

    def copy_stream(self) -> str:
        return COPY

    def event(self, timing: bool = False) -> FakeEvent:
        return FakeEvent()

    def record(self, event: FakeEvent, stream: str) -> None:
        with self.lock:
            op = self._stream_op("record", stream)
            event.clock = op.clock
            event.recorded += 1
            if self.lazy and stream == COPY:
                self.pending.append(("record", event, event.recorded))
            else:
                event.completed = event.recorded

    def wait(self, stream: str, event: FakeEvent) -> None:
        with self.lock:
            self._stream_op("wait", stream)
            self.clocks[stream] = _join(self.clocks[stream], event.clock)
            if stream == COMPUTE:
                self._run_until(event)

    def copy(self, dst: torch.Tensor, src: torch.Tensor, stream: str) -> None:
        with self.lock:
            self._stream_op("copy", stream, nbytes=dst.numel())
            if self.lazy and stream == COPY:
                self.pending.append(("copy", dst, src))
            else:
                dst.copy_(src)

    def host_sync(self, event: FakeEvent) -> None:
        with self.lock:
            t = self._thread()
            self.clocks[t] = _join(self.clocks.get(t, {}), event.clock)
            self._run_until(event)

    def query(self, event: FakeEvent) -> bool:
        return event.done

    def elapsed_ms(self, start: FakeEvent, end: FakeEvent) -> float:
        return 0.0

    def synchronize(self) -> None:
        with self.lock:
            self._run_until(None)

    def alloc_device(self, nbytes: int) -> torch.Tensor:
        return aligned_empty(nbytes)

    def pin(self, host: torch.Tensor) -> None:
        self.pinned.append(host.data_ptr())

    def unpin(self, host: torch.Tensor) -> None:
        if host.data_ptr() in self.pinned:
            self.pinned.remove(host.data_ptr())

    def trace(self, what: str, **info: Any) -> None:
        with self.lock:
            stream = info.pop("stream", None)
            if stream is not None:
                self._stream_op(what, stream, **info)
                return
            if what == "acquire":  # the main thread saw the read of unit g finish (future.result())
                t = self._thread()
                self.clocks[t] = _join(self.clocks.get(t, {}), self.written[info["g"]].clock)
            op = self._op(what, self._thread(), {}, **info)
            if what == "host_written":
                self.written[info["g"]] = op

    # -- lazy execution ---------------------------------------------------------------------------------
    def _run_until(self, event: FakeEvent | None) -> None:
        """Run deferred copy-stream work in order until ``event`` completed (all of it for None)."""
        while self.pending and (event is None or not event.done):
            item = self.pending.pop(0)
            if item[0] == "copy":
                item[1].copy_(item[2])
            else:
                item[1].completed = max(item[1].completed, item[2])

    # -- queries for tests ------------------------------------------------------------------------------
    def find(self, kind: str, **info: Any) -> list[Op]:
        return [o for o in self.ops if o.kind == kind and all(o.info.get(k) == v for k, v in info.items())]


def check_schedule(t: FakeTransport) -> dict[str, int]:
    """Assert the stream/event protocol on a recorded run; return how many facts were checked."""
    ops = t.ops
    checked = {"use_after_fill": 0, "fill_after_release": 0, "write_after_copy": 0, "copy_after_write": 0}
    last_fill: dict[int, Op] = {}  # slot -> latest "filled" op
    last_use: dict[int, Op] = {}  # slot -> latest "use"
    released: dict[int, Op] = {}  # slot -> release of the latest use
    for op in ops:
        slot = op.info.get("slot")
        if op.kind == "fill":
            if slot in last_use:
                rel = released.get(slot)
                unit = last_use[slot].info["unit"]
                assert rel is not None, f"slot {slot} refilled while unit {unit} still in use"
                assert t.hb(rel, op), f"fill of slot {slot} (g={op.info['g']}) may overwrite a unit in use"
                checked["fill_after_release"] += 1
        elif op.kind == "filled":
            last_fill[slot] = op
        elif op.kind == "use":
            fill = last_fill.get(slot)
            unit = op.info["unit"]
            assert fill is not None and fill.info["g"] == op.info["g"], f"unit {unit} used an unfilled slot"
            assert t.hb(fill, op), f"unit {unit} may compute before its copy into slot {slot} finished"
            checked["use_after_fill"] += 1
            last_use[slot] = op
            released.pop(slot, None)
        elif op.kind == "release":
            released[slot] = op
    host_released: dict[int, list[Op]] = {}
    position = {id(o): i for i, o in enumerate(ops)}
    for i, op in enumerate(ops):
        if op.kind == "host_released":
            host_released.setdefault(op.info["buffer"], []).append(op)
        elif op.kind == "host_write":
            req = t.find("request", g=op.info["g"])[-1]
            for prev in host_released.get(op.info["buffer"], []):
                if position[id(prev)] < position[id(req)]:
                    assert t.hb(prev, op), f"disk read of g={op.info['g']} may overwrite bytes being copied"
                    checked["write_after_copy"] += 1
        elif op.kind == "filled" and op.info["g"] in t.written:
            fills = [o for o in ops[:i] if o.kind == "fill" and o.info["g"] == op.info["g"]]
            g = op.info["g"]
            assert t.hb(t.written[g], fills[-1]), f"copy of g={g} may read before its disk read"
            checked["copy_after_write"] += 1
    return checked
