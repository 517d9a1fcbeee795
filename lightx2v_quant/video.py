"""Video output: decoded frames -> H.264 mp4 (imageio-ffmpeg), written under a temporary name and renamed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """[3, T, H, W] in [-1, 1] (the VAE's output) -> [T, H, W, 3] uint8."""
    if video.dim() != 4 or video.shape[0] != 3:
        raise ValueError(f"expected a [3, T, H, W] video, got {list(video.shape)}")
    frames = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return frames.permute(1, 2, 3, 0).contiguous().cpu().numpy()


def write_mp4(frames: np.ndarray, path: str | Path, fps: int, crf: int = 18) -> Path:
    """Write [T, H, W, 3] uint8 frames as H.264 (yuv420p, plays everywhere) to ``path`` atomically."""
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401 - imageio's ffmpeg plugin needs it (else a less clear error)
    except ImportError as exc:  # pragma: no cover - a dependency of lightx2v_quant
        raise RuntimeError("writing video.mp4 needs imageio and imageio-ffmpeg: pip install imageio imageio-ffmpeg") from exc
    path = Path(path)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected [T, H, W, 3] uint8 frames, got {frames.dtype} {list(frames.shape)}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(
            f"H.264 yuv420p needs even height and width, got {frames.shape[1]}x{frames.shape[2]}"
        )
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    writer = imageio.get_writer(
        tmp,
        format="FFMPEG",
        fps=fps,
        codec="libx264",
        pixelformat="yuv420p",
        macro_block_size=2,
        ffmpeg_log_level="error",
        output_params=["-crf", str(crf)],
    )
    try:
        for frame in frames:
            writer.append_data(frame)
    finally:
        writer.close()
    os.replace(tmp, path)
    return path
