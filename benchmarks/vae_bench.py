"""Time and peak GPU memory of the Wan2.1 VAE (official size, random weights) encoding / decoding a video.

Usage (GPU):  PYTHONPATH=. python benchmarks/vae_bench.py --out benchmarks/results/vae_h100.json
                  [--dtype fp32|bf16] [--height 480 --width 832 --frames 81] [--diffusers]

Runs decode for a short (5 frames) and the full video to show that peak memory does not grow with the
frame count (video and latents stay in CPU memory; chunks move to the GPU). ``--diffusers`` also runs
diffusers' AutoencoderKLWan with the same weights (whole video on the GPU) and reports its numbers and
the largest difference. Random weights: timings and memory are those of the real model, pixels are not.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lightx2v_quant.models.wan import VaeConfig, random_vae
from lightx2v_quant.models.wan.vae_load import official_to_diffusers

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _measure(fn, repeats: int) -> tuple[float, float, torch.Tensor]:
    """(median seconds, peak GiB allocated during the calls, last output)."""
    fn()  # warm-up (cuDNN autotuning, allocator)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2], torch.cuda.max_memory_allocated() / 2**30, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="tiny test config (smoke run)")
    ap.add_argument("--diffusers", action="store_true", help="also run diffusers' VAE, same weights")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("vae_bench needs a CUDA GPU")

    cfg, dtype = (VaeConfig.tiny() if args.tiny else VaeConfig()), DTYPES[args.dtype]
    vae = random_vae(cfg, dtype=dtype, device="cuda", seed=0)
    weights_gib = sum(p.numel() * p.element_size() for p in vae.parameters()) / 2**30
    gen = torch.Generator().manual_seed(0)
    video = torch.rand(1, 3, args.frames, args.height, args.width, generator=gen) * 2 - 1  # CPU
    lat_shape = vae.latent_shape(tuple(video.shape))
    results: dict = {
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "dtype": args.dtype,
        "weights": f"random (seeded); {'tiny test' if args.tiny else 'official Wan2.1'} VAE architecture",
        "weights_gib": round(weights_gib, 3),
        "video": list(video.shape), "latents": list(lat_shape), "repeats": args.repeats,
    }

    t, peak, latents = _measure(lambda: vae.encode(video), args.repeats)
    results["encode"] = {"seconds": round(t, 3), "peak_gib": round(peak, 3)}
    t, peak, decoded = _measure(lambda: vae.decode(latents), args.repeats)
    results["decode"] = {"seconds": round(t, 3), "peak_gib": round(peak, 3)}
    t, peak, _ = _measure(lambda: vae.decode(latents[:, :, :2]), args.repeats)
    results["decode_5_frames"] = {"seconds": round(t, 3), "peak_gib": round(peak, 3)}

    if args.diffusers:
        from diffusers import AutoencoderKLWan

        ref = AutoencoderKLWan(base_dim=cfg.dim, z_dim=cfg.z_dim).eval()
        ours_sd = {k: v.float().cpu() for k, v in vae.state_dict().items()}
        ref.load_state_dict(official_to_diffusers(ours_sd, cfg))
        ref = ref.to("cuda", dtype)
        mean = torch.tensor(cfg.latents_mean, device="cuda").view(1, -1, 1, 1, 1)
        std = torch.tensor(cfg.latents_std, device="cuda").view(1, -1, 1, 1, 1)
        z = (latents.cuda() * std + mean).to(dtype)
        del vae
        torch.cuda.empty_cache()
        with torch.no_grad():
            t, peak, ref_out = _measure(lambda: ref.decode(z).sample, args.repeats)
        diff = (ref_out.float().cpu().clamp(-1, 1) - decoded).abs()
        results["diffusers_decode"] = {"seconds": round(t, 3), "peak_gib": round(peak, 3),
                                       "max_abs_diff_vs_ours": float(diff.max()),
                                       "mean_abs_diff_vs_ours": float(diff.mean())}

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
