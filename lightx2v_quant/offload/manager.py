"""The runner's entry point: ``wrap_for_offload(dit, cfg.offload, device) -> OffloadHandle``.

Modes: ``model`` (the whole DIT copied in for the sampling loop, dropped after), ``block`` / ``phase`` (units
stream through a ring of device slots, prefetched on a copy stream), ``disk`` (the same, with the units read
from safetensors files on demand). Setup runs each kernel's ``prepare`` on the compute device, lays every unit
out as one byte arena and re-points the model at host copies (or at nothing, for disk); ``begin``/``end``
(or ``with handle:``) bracket the sampling loop; ``stats()`` is the dict for report.json.
"""

from __future__ import annotations

import logging
import time
import weakref
from typing import Any, Callable

import torch
from torch import nn

from lightx2v_quant.offload import disk as diskmod
from lightx2v_quant.offload.layout import TensorRef, UnitLayout, apply_binding, build_layout, current_tensor
from lightx2v_quant.offload.schedule import Pipeline, PinnedStore, TransferStats, UnitRuntime
from lightx2v_quant.offload.transport import CudaTransport, Transport
from lightx2v_quant.offload.units import UnitDef, get_blocks, non_block_refs, unit_defs
from lightx2v_quant.quant.linear import QuantLinear

log = logging.getLogger(__name__)
MODES = ("model", "block", "phase", "disk")
_ACTIVE: dict[str, weakref.ref] = {}  # device -> the handle whose model is on it (one at a time)


class OffloadHandle:
    """Owns the offloaded model's memory. Use ``with handle:`` around the sampling loop."""

    def __init__(self, model: nn.Module, mode: str, granularity: str, transport: Transport,
                 non_block: UnitRuntime, units: list[UnitRuntime], defs: list[UnitDef], *, slots: int,
                 store: Any, timing: bool, setup_s: float) -> None:
        self.model = model
        self.mode = mode
        self.granularity = granularity
        self.t = transport
        self.non_block = non_block
        self.units = units
        self.store = store
        self.transfer = TransferStats()
        self.setup_s = setup_s
        self.active = False
        self.open = True  # until close(): hooks installed, host pages registered
        self._arenas: list[torch.Tensor] = []
        self._hooks: list[Any] = []
        self._peak = 0
        self.pipeline: Pipeline | None = None
        self.begins = 0
        # Calling the model begins lazily: the runner may simply call it (and end() or drop it when done).
        self._hooks.append(model.register_forward_pre_hook(_ensure_active(weakref.ref(self))))
        if mode != "model":
            self.pipeline = Pipeline(transport, units, store, slots, self.transfer, timing=timing)
            for i, d in enumerate(defs):
                for module in d.triggers:
                    self._hooks.append(module.register_forward_pre_hook(_trigger(self.pipeline, i)))

    # -- sampling-loop bracket ------------------------------------------------------------------------
    def begin(self) -> None:
        """Put the resident part on the device (everything in `model` mode; the non-block part otherwise)."""
        if self.active:
            raise RuntimeError("offload handle is already active (begin() called twice without end())")
        if not self.open:
            raise RuntimeError("this offload handle was closed")
        t = self.t
        other = _ACTIVE.get(str(t.device))
        if other is not None and other() is not None and other() is not self and other().active:
            log.info("offload: %s model leaves %s for the next one", other().mode, t.device)
            other().end()  # e.g. Wan2.2's two experts: one offloaded DIT on the card at a time
        resident = [self.non_block] + (self.units if self.mode == "model" else [])
        with torch.inference_mode(False):
            for unit in resident:
                arena = t.alloc_device(unit.nbytes)
                self._arenas.append(arena)
                if unit.disk is not None:
                    diskmod.fill_from_disk(unit.disk, arena, self.store.reader, self.store.backing, t)
                else:
                    t.copy(arena[:unit.nbytes], unit.host[:unit.nbytes], t.compute_stream())
                self.transfer.bytes_moved += unit.nbytes
                apply_binding(unit.layout.views(arena))
        if self.pipeline is not None:
            self.pipeline.start()
        self.active = True
        self.begins += 1
        _ACTIVE[str(t.device)] = weakref.ref(self)

    def end(self) -> None:
        """Re-point everything at its host copy (or nothing) and free the device memory (no D2H copy)."""
        if not self.active:
            return
        if self.pipeline is not None:
            self.pipeline.stop()
        self.t.synchronize()
        self._peak = max(self._peak, self.t.peak_memory())
        for unit in [self.non_block] + (self.units if self.mode == "model" else []):
            apply_binding(unit.home)
        self._arenas = []
        self.active = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the model (begins lazily): the handle can stand where the DIT stood."""
        return self.model(*args, **kwargs)

    def __enter__(self) -> OffloadHandle:
        self.begin()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.end()

    def close(self) -> None:
        """End, remove the hooks and release host memory registrations. The model keeps its host copies
        (meta placeholders for disk); it can be wrapped again."""
        if not self.open:
            return
        self.end()
        for h in self._hooks:
            h.remove()
        self._hooks = []
        if self.mode == "disk":
            self.store.close()
        for unit in [self.non_block, *self.units]:
            if unit.host is not None:
                self.t.unpin(unit.host)
        self.open = False
        if getattr(self.model, "_offload_handle", None) is self:
            del self.model._offload_handle

    def __deepcopy__(self, memo: dict) -> Any:
        raise TypeError("an offloaded model cannot be deep-copied (its weights live in this handle's "
                        "buffers): copy it before wrap_for_offload, or close() the handle first")

    # -- report -----------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Offload facts for report.json (sizes in bytes, times in ms / s)."""
        if self.active:
            self.t.synchronize()
            self.transfer.resolve(self.t, block=True)
            self._peak = max(self._peak, self.t.peak_memory())
        tr = self.transfer
        per_forward = sum(u.nbytes for u in self.units) if self.mode != "model" else 0
        slots = self.pipeline.k if self.pipeline else 0
        slot_bytes = self.pipeline.slot_bytes if self.pipeline else 0
        resident = self.non_block.nbytes + (sum(u.nbytes for u in self.units) if self.mode == "model" else 0)
        out: dict[str, Any] = {
            "mode": self.mode,
            "granularity": self.granularity if self.mode in ("phase", "disk") else self.mode,
            "units_per_forward": len(self.units),
            "device_slots": slots,
            "slot_bytes": slot_bytes,
            "device_weight_bytes": resident + slots * slot_bytes,
            "resident_bytes": resident,
            "host_weight_bytes": self.host_bytes(),
            "bytes_per_forward": per_forward,
            "bytes_moved": tr.bytes_moved,
            "forwards": tr.forwards,
            "transfer_wait_ms": round(tr.wait_ms, 3),
            "copy_ms": round(tr.copy_ms, 3),
            "copy_gb_per_s": round(tr.bytes_moved / tr.copy_ms / 1e6, 2) if tr.copy_ms > 0 else None,
            "host_wait_s": round(tr.host_wait_s, 4),
            "restarts": tr.restarts,
            "begins": self.begins,
            "peak_gpu_bytes": self._peak,
            "setup_s": round(self.setup_s, 3),
        }
        if self.mode == "disk":
            out["disk_read_bytes"] = self.store.reader.bytes_read
            out["disk_read_s"] = round(self.store.reader.read_s, 3)
        return out

    def host_bytes(self) -> int:
        if self.mode == "disk":
            return self.store.host_bytes + self.non_block.disk.host_bytes
        return sum(u.host.numel() for u in [self.non_block, *self.units])


def _ensure_active(ref: weakref.ref) -> Callable:
    def hook(module: nn.Module, args: Any) -> None:
        handle = ref()
        if handle is not None and handle.open and not handle.active:
            handle.begin()
    return hook


def _trigger(pipeline: Pipeline, unit: int) -> Callable:
    def hook(module: nn.Module, args: Any) -> None:
        pipeline.trigger(unit)
    return hook


# -- setup -------------------------------------------------------------------------------------------------


def wrap_for_offload(model: nn.Module, offload_cfg: Any, device: torch.device | str, *,
                     mode: str | None = None, granularity: str | None = None, checkpoint: str | None = None,
                     key_map: Callable[[str], str | None] | None = None,
                     phases: tuple[tuple[str, ...], ...] | None = None, transport: Transport | None = None,
                     timing: bool = True) -> OffloadHandle:
    """Offload ``model`` (a module with a ``blocks`` ModuleList) per ``offload_cfg`` (config.OffloadConfig).

    ``mode`` / ``granularity`` override ``offload_cfg`` (pass ``plan.offload.mode`` and ``.granularity``,
    which validation resolved for ``auto``). ``disk`` needs
    ``checkpoint`` (a per-block folder, a .safetensors file or an index); the model may then be on the meta
    device (built, not loaded) except for computed buffers. ``key_map`` maps checkpoint keys to model keys.
    """
    mode = str(mode or offload_cfg.mode)
    if mode not in MODES:
        raise ValueError(f"wrap_for_offload: mode {mode!r} is not one of {', '.join(MODES)}"
                         + ("; resolve `auto` with lightx2v_quant.validate first (plan.offload.mode)"
                            if mode == "auto" else ""))
    granularity = {"phase": "phase", "disk": str(granularity or offload_cfg.granularity)}.get(mode, "block")
    if granularity not in ("block", "phase"):
        raise ValueError(f"offload.granularity must be 'block' or 'phase', not {granularity!r}")
    previous = getattr(model, "_offload_handle", None)
    if previous is not None and previous.open:
        raise RuntimeError("this model is already offloaded: close() its handle before wrapping it again")
    t = transport or CudaTransport(device)
    t0 = time.perf_counter()
    index = None
    if mode == "disk":
        if checkpoint is None:
            raise ValueError("offload=disk reads the DIT from safetensors: pass checkpoint=<per-block folder "
                             "or file>")
        index = diskmod.file_index(diskmod.dit_files(checkpoint), key_map)
    defs = unit_defs(model, granularity, phases)
    setup = _Setup(t, index)
    _forget_meta_preparation(model)
    setup.materialize(non_block_refs(model))
    _prepare(model, t.device, skip="blocks.")
    non_block = setup.unit(build_layout("non_block", non_block_refs(model)))
    units: list[UnitRuntime] = []
    for i, block in enumerate(get_blocks(model)):
        mine = [d for d in defs if d.block == i]
        setup.materialize([r for d in mine for r in d.refs()])
        _prepare(block, t.device)
        # One block at a time: host memory never holds more than the model plus one block during setup.
        units.extend(setup.unit(build_layout(d.name, d.refs())) for d in mine)
    setup.close()
    if mode == "disk":
        buffers = int(getattr(offload_cfg, "host_buffers", 3))
        store: Any = diskmod.DiskStore(t, [u.disk for u in units], buffers, int(offload_cfg.num_disk_workers),
                                       bool(offload_cfg.pin_memory))
    else:
        store = PinnedStore([u.host for u in units])
        if offload_cfg.pin_memory:
            for u in [non_block, *units]:
                t.pin(u.host)
    slots = int(getattr(offload_cfg, "slots", 2) or 2)
    handle = OffloadHandle(model, mode, granularity, t, non_block, units, defs, slots=slots, store=store,
                           timing=timing, setup_s=time.perf_counter() - t0)
    # The model and its handle keep each other alive: drop both (e.g. `del dits; gc.collect()`) and the device
    # and pinned memory go with them.
    model._offload_handle = handle
    log.info("offload=%s (%s): %d units of up to %.1f MB, %.1f MB resident, %.1f MB of weights on the host, "
             "setup %.1f s", mode, granularity, len(units), max(u.nbytes for u in units) / 1e6,
             non_block.nbytes / 1e6, handle.host_bytes() / 1e6, handle.setup_s)
    return handle


class _Setup:
    """Turns laid-out units into their runtime form: packed into a host arena, or planned for disk reads."""

    def __init__(self, transport: Transport, index: dict[str, diskmod.FileTensor] | None) -> None:
        self.t = transport
        self.index = index
        self.reader = diskmod.FileReader() if index is not None else None

    def unit(self, layout: UnitLayout) -> UnitRuntime:
        if self.index is not None:
            plan = diskmod.plan_disk_unit(layout, self.index)
            runtime = UnitRuntime(layout, layout.meta_views(), disk=plan)
        else:
            arena = self.t.alloc_host(layout.nbytes)
            layout.pack(arena)
            runtime = UnitRuntime(layout, layout.views(arena), host=arena)
        layout.drop_sources()
        apply_binding(runtime.home)  # the original (maybe device) tensors are released here
        return runtime

    def materialize(self, refs: list[TensorRef]) -> None:
        """Give meta tensors their data from the checkpoint (disk); elsewhere a meta tensor is an error."""
        for ref in refs:
            t = current_tensor(ref)
            if not t.is_meta:
                continue
            if self.index is None:
                raise ValueError(f"{ref.qualname} is on the meta device: load the model before offload=model/"
                                 f"block/phase, or use offload=disk with its checkpoint")
            ft = self.index.get(ref.qualname)
            if ft is None or not ref.persistent:
                raise ValueError(f"{ref.qualname} is on the meta device and not in the checkpoint files: "
                                 f"materialize the model's computed buffers before wrapping it")
            problem = diskmod.tensor_mismatch(ref.qualname, ft, ref.dtype, ref.numel)
            if problem:
                raise ValueError(problem)
            raw = torch.empty(ft.nbytes, dtype=torch.uint8)
            self.reader.read_into(ft, 0, raw)
            value = torch.empty_strided(ref.shape, ref.stride, dtype=ref.dtype)
            value.copy_(raw.view(ft.dtype).reshape(ref.shape))
            if ref.is_param:
                value = nn.Parameter(value, requires_grad=ref.requires_grad)
            ref.container[ref.name] = value

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()


def _forget_meta_preparation(model: nn.Module) -> None:
    """A layer whose kernel-derived buffers are on meta (the model was disk-offloaded before) is prepared
    again once its stored tensors are read: drop the placeholders instead of asking a checkpoint for them."""
    for layer in model.modules():
        if not isinstance(layer, QuantLinear):
            continue
        derived = [n for n in layer._non_persistent_buffers_set if n in layer._buffers]
        if any(layer._buffers[n] is not None and layer._buffers[n].is_meta for n in derived):
            for name in derived:
                del layer._buffers[name]
            layer._non_persistent_buffers_set.difference_update(derived)
            layer.prepared_for = None


def _prepare(module: nn.Module, device: torch.device, skip: str | None = None) -> None:
    """Run kernels' ``prepare`` on the compute device type where it has not run yet: it may lay weights out
    differently per device type, so it must see the device the unit will compute on."""
    for name, layer in module.named_modules():
        skipped = skip is not None and name.startswith(skip)
        if isinstance(layer, QuantLinear) and layer.prepared_for != device.type and not skipped:
            layer.to(device)
            layer.prepare()
