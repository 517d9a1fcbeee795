"""Encoders and VAE under offload: where each one lives, and moving a whole module to the GPU only while it
runs.

``OnDemand`` keeps a module's weights in one pinned host arena; ``with od:`` copies them to the device in
one transfer and re-points the module at them, and leaving the block re-points it at the host copy (no
device->host copy: weights are read-only) and frees the device memory for the next stage.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightx2v_quant.offload.layout import apply_binding, build_layout, module_refs
from lightx2v_quant.offload.transport import CudaTransport, Transport
from lightx2v_quant.quant.linear import QuantLinear


def encoder_placement(offload_cfg: Any, mode: str) -> dict[str, str]:
    """Where the runner keeps each encoder: ``resident`` (on the GPU throughout), ``on_demand`` (``OnDemand``:
    on the GPU only while it runs) or ``cpu`` (runs on the CPU: the T5 with ``offload.t5_cpu``)."""
    placement = "resident" if mode == "none" else "on_demand"
    t5_cpu = bool(getattr(offload_cfg, "t5_cpu", False))
    return {"t5": "cpu" if t5_cpu else placement, "clip": placement, "vae": placement}


class OnDemand:
    """A module whose weights live in host memory and visit ``device`` for the length of a ``with`` block."""

    def __init__(self, module: nn.Module, device: torch.device | str, *, pin: bool = True,
                 transport: Transport | None = None) -> None:
        self.module = module
        self.t = transport or CudaTransport(device)
        for layer in module.modules():
            if isinstance(layer, QuantLinear) and layer.prepared_for != self.t.device.type:
                layer.to(self.t.device)  # kernels lay weights out per device type: prepare where it will run
                layer.prepare()
        self.layout = build_layout(type(module).__name__, module_refs(module, ""))
        self.host = self.t.alloc_host(self.layout.nbytes)
        self.layout.pack(self.host)
        self.home = self.layout.views(self.host)
        apply_binding(self.home)
        if pin:
            self.t.pin(self.host)
        self._arena: torch.Tensor | None = None
        self.bytes_moved = 0

    @property
    def nbytes(self) -> int:
        return self.layout.nbytes

    def __enter__(self) -> nn.Module:
        if self._arena is not None:
            raise RuntimeError(f"{type(self.module).__name__} is already on the device (nested `with`)")
        with torch.inference_mode(False):
            self._arena = self.t.alloc_device(self.layout.nbytes)
            n = self.layout.nbytes
            self.t.copy(self._arena[:n], self.host[:n], self.t.compute_stream())
            apply_binding(self.layout.views(self._arena))
        self.bytes_moved += self.layout.nbytes
        return self.module

    def __exit__(self, *exc: Any) -> None:
        apply_binding(self.home)
        self._arena = None  # freed in compute-stream order: work queued on the module still sees its memory

    def close(self) -> None:
        self.t.unpin(self.host)
