"""Attention behind one small interface: ``attention(q, k, v, backend)`` with a registry of backends.

Every backend takes q [B, Lq, heads, head_dim] and k/v [B, Lk, heads, head_dim] in the same dtype and
returns [B, Lq, heads, head_dim] in that dtype: full (unmasked) softmax attention with scale
1/sqrt(head_dim), as the official Wan model computes it. Registered: ``sdpa`` (torch), and from
``lightx2v_quant.attention.backends`` flash-attn 2 / 3 and SageAttention 2 (when installed) and our
low-precision Triton kernels (``int8qk-fp8pv``, ``int8qk``). ``backend_problem`` says why a backend
cannot run on a device (validation calls it at launch).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

_BACKENDS: dict[str, AttentionFn] = {}
# name -> problem(device, sm) -> reason or None; backends without one run everywhere
_PROBLEMS: dict[str, Callable[[str, "int | None"], "str | None"]] = {}


def register_backend(name: str, fn: AttentionFn, problem: Callable[[str, int | None], str | None] | None = None
                     ) -> None:
    """Add a backend. Registering a name twice is an error (it would hide which one runs).

    ``problem(device, sm)`` returns why the backend cannot run on device type ``device`` ("cuda"/"cpu")
    with compute capability ``sm`` (e.g. 90; None off CUDA), or None when it can."""
    if name in _BACKENDS:
        raise ValueError(f"attention backend {name!r} is already registered")
    _BACKENDS[name] = fn
    if problem is not None:
        _PROBLEMS[name] = problem


def backend_problem(name: str, device: str, sm: int | None = None) -> str | None:
    """Why backend ``name`` cannot run on ``device`` / ``sm``; None when it can (unknown names: why not)."""
    if name not in _BACKENDS:
        return f"unknown attention backend {name!r}; backends: {', '.join(_BACKENDS)}"
    check = _PROBLEMS.get(name)
    return check(device, sm) if check is not None else None


def backends() -> tuple[str, ...]:
    return tuple(_BACKENDS)


def get_backend(name: str) -> AttentionFn:
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown attention backend {name!r}; backends: {', '.join(_BACKENDS)}") from None


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, L, D] -> [B, L, heads, head_dim] (a view)."""
    return x.unflatten(-1, (num_heads, -1))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa") -> torch.Tensor:
    """Softmax attention over [B, L, heads, head_dim] tensors with the named backend."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attention wants [B, L, heads, head_dim] tensors, got q {list(q.shape)}, "
                         f"k {list(k.shape)}, v {list(v.shape)}")
    return get_backend(backend)(q, k, v)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # SDPA works on [B, heads, L, head_dim]; transposed views are fine for its kernels.
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


register_backend("sdpa", _sdpa)


def _register_extra() -> None:
    from lightx2v_quant.attention.backends import SPECS

    for spec in SPECS:
        register_backend(spec.name, spec.fn, spec.problem)


_register_extra()
