"""Attention behind one small interface: ``attention(q, k, v, backend)`` with a registry of backends.

Every backend takes q [B, Lq, heads, head_dim] and k/v [B, Lk, heads, head_dim] in the same dtype and
returns [B, Lq, heads, head_dim] in that dtype: full (unmasked) softmax attention with scale
1/sqrt(head_dim), as the official Wan model computes it. More backends (flash-attn, Sage, our Triton
kernel) register themselves with ``register_backend``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

_BACKENDS: dict[str, AttentionFn] = {}


def register_backend(name: str, fn: AttentionFn) -> None:
    """Add a backend. Registering a name twice is an error (it would hide which one runs)."""
    if name in _BACKENDS:
        raise ValueError(f"attention backend {name!r} is already registered")
    _BACKENDS[name] = fn


def backends() -> tuple[str, ...]:
    return tuple(_BACKENDS)


def get_backend(name: str) -> AttentionFn:
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown attention backend {name!r}; backends: {', '.join(_BACKENDS)}") from None


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
