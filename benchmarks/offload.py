"""Offload benchmark: one Wan DIT forward (default Wan2.1-T2V-14B, fp8, 480p, random weights) with no
offload and with offload=model / block / phase / disk (block and phase units), on one CUDA GPU.

Per mode: forward time (median of --repeat, after one warm-up) and its ratio to no offload, DIT GPU memory
(weights on the card after begin(), peak during the forwards), bytes moved per forward, time the compute
stream waited for weights, copy bandwidth, whether the output is bit-identical to no offload; for disk also
the host RSS over the baseline (sampled during the forwards) and a cold first forward (files dropped from the
page cache with posix_fadvise). Writes <out>/offload_<model>_<scheme>_<device>.json and prints a table.

    python benchmarks/offload.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightx2v_quant.config import OffloadConfig  # noqa: E402
from lightx2v_quant.offload import dit_files, save_by_block, wrap_for_offload  # noqa: E402
from lightx2v_quant.offload.memory import dit_tokens  # noqa: E402
from lightx2v_quant.quant.apply import weight_bytes  # noqa: E402

DEVICE = "cuda"
MODES = [("model", "block"), ("block", "block"), ("phase", "phase"), ("disk", "block"), ("disk", "phase")]


def rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class RssSampler:
    """Highest RSS seen while active (sampled every 10 ms on a thread)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.01)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def timed_forwards(model, inputs, repeat: int) -> tuple[list[float], torch.Tensor]:
    times, out = [], None
    for _ in range(repeat):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model(*inputs)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return times, out


def drop_page_cache(files: list[Path]) -> bool:
    """Ask the kernel to drop these files' cached pages (per-file advice; no privileges, no global effect)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for the JSON result")
    ap.add_argument("--model", default="wan2.1-t2v-14b", help="a WanDiTConfig preset")
    ap.add_argument("--scheme", default="fp8-torch", help="DIT quantization scheme (online-quantized)")
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--repeat", type=int, default=2, help="timed forwards per mode (after one warm-up)")
    ap.add_argument("--modes", default=",".join(f"{m}:{g}" for m, g in MODES),
                    help="comma list of mode:granularity to run after no offload")
    ap.add_argument("--tmp", default=None,
                    help="folder for the per-block files (default: a temp dir, removed at the end)")
    ap.add_argument("--host-buffers", type=int, default=3)
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()

    from lightx2v_quant.models.wan import WanDiTConfig, random_dit

    device = torch.device(DEVICE)
    name = torch.cuda.get_device_name(device)
    torch.manual_seed(0)
    cfg = WanDiTConfig.preset(args.model)
    lat = ((args.frames - 1) // 4 + 1, args.height // 8, args.width // 8)
    tokens = dit_tokens(args.height, args.width, args.frames, tuple(cfg.patch_size))
    x = torch.randn(1, cfg.in_dim, *lat, device=device)
    context = torch.randn(1, cfg.text_len, cfg.text_dim, device=device, dtype=torch.bfloat16)
    inputs = (x, torch.tensor([500.0], device=device), context)
    result = {"device": name, "torch": torch.__version__, "model": args.model, "scheme": args.scheme,
              "resolution": [args.height, args.width, args.frames], "tokens": tokens, "modes": {}}

    t0 = time.perf_counter()
    quant = None if args.scheme == "none" else args.scheme
    model = random_dit(cfg, torch.bfloat16, device, seed=0, quant=quant)
    result["build_s"] = round(time.perf_counter() - t0, 1)
    result["dit_weight_bytes"] = weight_bytes(model)
    block_bytes = weight_bytes(model.blocks[0])
    print(f"{args.model} {args.scheme}: {result['dit_weight_bytes'] / 1e9:.2f} GB of weights, "
          f"{block_bytes / 1e6:.0f} MB a block, {tokens} tokens, built in {result['build_s']} s", flush=True)

    with torch.no_grad():
        timed_forwards(model, inputs, 1)  # warm-up: kernels, cuBLAS handles, prepare()
        torch.cuda.reset_peak_memory_stats()
        resident = torch.cuda.memory_allocated()
        times, reference = timed_forwards(model, inputs, args.repeat)
    base_ms = statistics.median(times)
    result["modes"]["none"] = {"forward_ms": [round(t, 1) for t in times], "median_ms": round(base_ms, 1),
                               "ratio": 1.0, "gpu_weights_bytes": resident,
                               "gpu_peak_bytes": torch.cuda.max_memory_allocated()}
    reference = reference.cpu()
    print(f"none: {base_ms:.0f} ms", flush=True)

    folder = Path(args.tmp or tempfile.mkdtemp(prefix="offload_bench_"))  # ~15 GB for Wan 14B fp8
    t0 = time.perf_counter()
    save_by_block(model, folder)
    files = dit_files(folder)
    result["save_by_block_s"] = round(time.perf_counter() - t0, 1)
    rss0 = rss_bytes()  # the process with CUDA up and the model on the GPU: nothing of the DIT on the host

    for spec in args.modes.split(","):
        mode, gran = spec.split(":")
        label = mode if mode != "disk" else f"disk-{gran}"
        ocfg = OffloadConfig(mode=mode, granularity=gran, num_disk_workers=args.workers,
                             host_buffers=args.host_buffers)
        t0 = time.perf_counter()
        handle = wrap_for_offload(model, ocfg, device, checkpoint=str(folder) if mode == "disk" else None)
        setup_s = time.perf_counter() - t0
        entry: dict = {"setup_s": round(setup_s, 1)}
        with torch.no_grad():
            if mode == "disk":
                entry["page_cache_dropped"] = drop_page_cache(files)
            torch.cuda.reset_peak_memory_stats()
            with RssSampler() as rss:
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                handle.begin()  # the resident part (all of it for `model`) goes to the GPU
                torch.cuda.synchronize()
                entry["begin_ms"] = round((time.perf_counter() - t0) * 1e3, 1)
                entry["gpu_weights_bytes"] = torch.cuda.memory_allocated()
                warm, _ = timed_forwards(model, inputs, 1)
                times, out = timed_forwards(model, inputs, args.repeat)
                handle.end()
            entry["gpu_peak_bytes"] = torch.cuda.max_memory_allocated()
        med = statistics.median(times)
        stats = handle.stats()
        forwards = max(stats["forwards"], 1)
        entry.update({
            "first_forward_ms": round(warm[0], 1), "forward_ms": [round(t, 1) for t in times],
            "median_ms": round(med, 1), "ratio": round(med / base_ms, 3),
            "identical": bool(torch.equal(out.cpu(), reference)),
            "bytes_per_forward": stats["bytes_per_forward"],
            "wait_ms_per_forward": round(stats["transfer_wait_ms"] / forwards, 1),
            "copy_gb_per_s": stats["copy_gb_per_s"], "host_weight_bytes": stats["host_weight_bytes"],
            "device_weight_bytes": stats["device_weight_bytes"], "stats": stats,
        })
        if mode == "disk":
            entry["host_rss_over_baseline_bytes"] = rss.peak - rss0
            entry["host_rss_blocks"] = round((rss.peak - rss0) / block_bytes, 2)
        handle.close()
        del handle  # its host arenas go as soon as the next wrap re-points the model
        result["modes"][label] = entry
        print(f"{label}: {med:.0f} ms ({med / base_ms:.3f}x), GPU weights "
              f"{entry['gpu_weights_bytes'] / 1e9:.2f} GB, peak {entry['gpu_peak_bytes'] / 1e9:.2f} GB, "
              f"identical={entry['identical']}", flush=True)

    if args.tmp is None:
        shutil.rmtree(folder, ignore_errors=True)
    m = result["modes"]
    result["targets"] = {
        "block_ratio_le_1.10": m.get("block", {}).get("ratio", 9) <= 1.10,
        "block_gpu_weights_le_3GB": m.get("block", {}).get("gpu_weights_bytes", 1e12) <= 3e9,
        "phase_less_memory_than_block": m.get("phase", {}).get("gpu_peak_bytes", 1e12)
        < m.get("block", {}).get("gpu_peak_bytes", 0),
        "phase_ratio_le_1.25": m.get("phase", {}).get("ratio", 9) <= 1.25,
        "disk_host_le_4_blocks": all(e.get("host_rss_blocks", 99) <= 4
                                     for k, e in m.items() if k.startswith("disk")),
        "all_identical": all(e.get("identical", True) for e in m.values()),
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = name.replace(" ", "_").replace("/", "_")
    path = out_dir / f"offload_{args.model}_{args.scheme}_{tag}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"\n{'mode':<12}{'median ms':>11}{'ratio':>8}{'GPU weights GB':>16}{'GPU peak GB':>13}"
          f"{'moved GB/fwd':>14}{'wait ms/fwd':>13}{'GB/s':>7}{'host GB':>9}  identical")
    for label, e in m.items():
        host = e.get("host_rss_over_baseline_bytes", e.get("host_weight_bytes", 0))
        print(f"{label:<12}{e['median_ms']:>11.0f}{e['ratio']:>8.3f}{e['gpu_weights_bytes'] / 1e9:>16.2f}"
              f"{e['gpu_peak_bytes'] / 1e9:>13.2f}{e.get('bytes_per_forward', 0) / 1e9:>14.2f}"
              f"{e.get('wait_ms_per_forward', 0):>13.1f}{e.get('copy_gb_per_s') or 0:>7.1f}{host / 1e9:>9.2f}"
              f"  {e.get('identical', True)}")
    print(f"targets: {result['targets']}\nwrote {path}")


if __name__ == "__main__":
    main()
