"""Hardware: what this machine has (detection) and what a named `hardware=` option promises."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class HardwareSpec:
    """A machine as the validation sees it.

    ``compute_capability`` is (major, minor) for a CUDA GPU and None for a CPU-only machine.
    """

    name: str
    device: str  # "cuda" or "cpu"
    compute_capability: tuple[int, int] | None
    memory_gb: float
    description: str = ""

    @property
    def sm(self) -> int:
        """Compute capability as an integer (90 for sm_90), 0 on CPU."""
        if self.compute_capability is None:
            return 0
        major, minor = self.compute_capability
        return major * 10 + minor

    @property
    def is_cuda(self) -> bool:
        return self.device == "cuda"

    def label(self) -> str:
        if not self.is_cuda:
            return f"{self.name} (CPU only)"
        return f"{self.name} (sm_{self.sm}, {self.memory_gb:.0f} GB)"


def parse_compute_capability(value: Any) -> tuple[int, int] | None:
    """'9.0' / 9.0 / '90' / (9, 0) / None -> (9, 0) / None."""
    if value is None or value == "":
        return None
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    text = str(value).strip()
    if "." in text:
        major, minor = text.split(".", 1)
        return int(major), int(minor)
    number = int(text)
    return number // 10, number % 10


def detect() -> HardwareSpec:
    """Describe the machine this process runs on (GPU 0 when CUDA is available)."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return HardwareSpec(
            name=props.name,
            device="cuda",
            compute_capability=(props.major, props.minor),
            memory_gb=props.total_memory / 1e9,
            description=f"detected {props.name}",
        )
    return HardwareSpec(name="cpu", device="cpu", compute_capability=None, memory_gb=_host_memory_gb(),
                        description="detected: no CUDA GPU")


def _host_memory_gb() -> float:
    try:
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return 0.0


def from_config(hw_cfg: Any) -> HardwareSpec:
    """Build the spec a named `hardware` option promises (not valid for `auto`)."""
    cc = parse_compute_capability(hw_cfg.compute_capability)
    return HardwareSpec(
        name=str(hw_cfg.name),
        device="cuda" if cc is not None else "cpu",
        compute_capability=cc,
        memory_gb=float(hw_cfg.memory_gb or 0.0),
        description=str(hw_cfg.description or ""),
    )


def mismatch(named: HardwareSpec, detected: HardwareSpec) -> str | None:
    """Why the named hardware is not the machine we run on, or None when they agree."""
    if named.is_cuda and not detected.is_cuda:
        return (
            f"hardware={named.name} names a CUDA GPU ({named.label()}) but this machine has no CUDA GPU; "
            f"use hardware=auto (or hardware=cpu)"
        )
    if not named.is_cuda and detected.is_cuda:
        return None  # running on CPU on a GPU machine is allowed: hardware=cpu means "use the CPU"
    if named.is_cuda and named.compute_capability != detected.compute_capability:
        return (
            f"hardware={named.name} is sm_{named.sm} but the detected GPU is {detected.name} (sm_{detected.sm}); "
            f"use hardware=auto or the option that matches this GPU"
        )
    return None
