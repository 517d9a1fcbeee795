"""3D rotary position embedding of the Wan DIT (frame / height / width axes, adjacent-pair rotation).

The head dim d is split into three axis bands as the official ``rope_params`` does: d - 4*(d//6) real
dims for frames and 2*(d//6) each for height and width (44/42/42 = 22/21/21 complex pairs for d=128).
Within a band of ``n`` real dims, pair i (channels 2i, 2i+1 of the band) turns by ``pos / 10000^(2i/n)``.
Angles are computed in float64 like the official tables; the rotation runs in the table dtype.
"""

from __future__ import annotations

import torch

THETA = 10000.0


def rope_bands(head_dim: int) -> tuple[int, int, int]:
    """Real dims of the (frame, height, width) bands; they sum to ``head_dim``."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def axis_angles(positions: int, band: int, device: torch.device | str | None = None) -> torch.Tensor:
    """float64 [positions, band/2]: angle of pair i at position p = p / THETA^(2i/band)."""
    inv_freq = 1.0 / torch.pow(THETA, torch.arange(0, band, 2, dtype=torch.float64, device=device) / band)
    return torch.outer(torch.arange(positions, dtype=torch.float64, device=device), inv_freq)


def rope_tables(
    grid: tuple[int, int, int], head_dim: int, device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each [F*H*W, head_dim/2], for tokens in (f, h, w) row-major order, positions from 0."""
    f, h, w = grid
    bf, bh, bw = rope_bands(head_dim)
    angles = torch.cat(
        [
            axis_angles(f, bf, device)[:, None, None, :].expand(f, h, w, bf // 2),
            axis_angles(h, bh, device)[None, :, None, :].expand(f, h, w, bh // 2),
            axis_angles(w, bw, device)[None, None, :, :].expand(f, h, w, bw // 2),
        ],
        dim=-1,
    ).reshape(f * h * w, head_dim // 2)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs of x [B, L, heads, head_dim]; computed and returned in cos.dtype.

    Pair (x[2i], x[2i+1]) is the complex number x[2i] + j*x[2i+1], multiplied by cos + j*sin.
    """
    xr = x.to(cos.dtype).unflatten(-1, (-1, 2))  # [B, L, H, d/2, 2]
    x1, x2 = xr[..., 0], xr[..., 1]
    c, s = cos[None, :, None, :], sin[None, :, None, :]  # [1, L, 1, d/2]
    return torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).flatten(-2)
