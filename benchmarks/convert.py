"""Benchmark the converter on a 14B-shaped Wan DIT with random weights: time, peak memory, file sizes.

A random official-layout DIT (bf16 by default, sharded with an index like the official release) is
written to a scratch folder, then converted to each format; every output is measured and deleted before
the next one, so the disk holds at most the source plus one output. Results go to
``--out DIR/convert_<device>_<time>.json``.

    PYTHONPATH=. python benchmarks/convert.py --out benchmarks/results --device cuda
    PYTHONPATH=. python benchmarks/convert.py --out /tmp/r --layers 2 --device cpu   # quick check
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path

import torch

from lightx2v_quant.checkpoints.conversion import ConvertOptions, convert
from lightx2v_quant.checkpoints.layout import format_by_name
from lightx2v_quant.checkpoints.synthetic import dit_shapes, random_tensors
from lightx2v_quant.checkpoints.writer import INDEX_NAME, SafetensorsWriter, TensorPlan, write_index

GIB = 2**30


class PeakMemory:
    """Samples this process's resident memory (RssAnon = private, VmRSS = incl. mapped file pages)."""

    def __init__(self, every_s: float = 0.02) -> None:
        self.every_s = every_s
        self.peak = {"rss_anon": 0, "rss": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def read() -> dict[str, int]:
        out = {}
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(("RssAnon:", "VmRSS:")):
                    name, kb = line.split()[:2]
                    out["rss_anon" if name == "RssAnon:" else "rss"] = int(kb) * 1024
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            for k, v in self.read().items():
                self.peak[k] = max(self.peak[k], v)
            time.sleep(self.every_s)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        for k, v in self.read().items():
            self.peak[k] = max(self.peak[k], v)


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def write_random_dit(
    folder: Path, shapes: dict, dtype: torch.dtype, shard_gib: float, device: str = "cpu"
) -> tuple[int, float]:
    """Sharded random DIT with an index (official naming); returns (bytes, seconds)."""
    started = time.time()
    plans = [TensorPlan(k, s, dtype) for k, s in shapes.items()]
    shards: list[list[TensorPlan]] = [[]]
    size = 0
    for p in plans:
        if shards[-1] and size + p.nbytes > shard_gib * GIB:
            shards.append([])
            size = 0
        shards[-1].append(p)
        size += p.nbytes
    n = len(shards)
    names = [f"diffusion_pytorch_model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    writers = [SafetensorsWriter(folder / name, shard) for name, shard in zip(names, shards)]
    where = {p.key: i for i, shard in enumerate(shards) for p in shard}
    for key, t in random_tensors(shapes, dtype, seed=0, device=device):
        writers[where[key]].write(key, t)
    for w in writers:
        w.close()
    write_index(folder / INDEX_NAME, {k: names[i] for k, i in where.items()}, sum(p.nbytes for p in plans))
    return sum(w.size for w in writers), time.time() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for the JSON result")
    ap.add_argument("--device", default="cpu", help="where the quantization math runs (cpu, cuda)")
    ap.add_argument("--formats", default="fp8,int8", help="comma list of formats to convert to")
    ap.add_argument("--source-dtype", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--layers", type=int, default=40, help="DIT blocks (40 = Wan2.1 14B)")
    ap.add_argument("--i2v", action="store_true", help="the I2V variant (img_emb, k_img/v_img)")
    ap.add_argument("--layout", default="single", choices=("single", "blocks"))
    ap.add_argument("--scratch", type=Path, default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--max-disk-gib", type=float, default=58.0, help="refuse to run above this scratch size")
    args = ap.parse_args()

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.source_dtype]
    shapes = dit_shapes(
        dim=5120, ffn_dim=13824, num_layers=args.layers, in_dim=36 if args.i2v else 16, i2v=args.i2v
    )
    numel = sum(torch.Size(s).numel() for s in shapes.values())
    src_bytes = numel * dtype.itemsize
    need = src_bytes + numel * 1.05  # the source plus one 8-bit output at a time
    if need > args.max_disk_gib * GIB:
        raise SystemExit(
            f"needs ~{need / GIB:.1f} GiB of scratch (> --max-disk-gib {args.max_disk_gib}); "
            "use --source-dtype bf16 or fewer --layers"
        )
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")

    scratch = Path(tempfile.mkdtemp(prefix="convert-bench-", dir=args.scratch))
    result = {
        "benchmark": "convert",
        "device": device_name(args.device),
        "cpu": device_name("cpu"),
        "device_arg": args.device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "params": numel,
        "layers": args.layers,
        "i2v": args.i2v,
        "source_dtype": args.source_dtype,
        "layout": args.layout,
        "note": "source written just before converting, so it is read from the page cache",
        "runs": [],
    }
    try:
        src = scratch / "original"
        src.mkdir()
        gen_device = "cuda" if args.device.startswith("cuda") else "cpu"
        written, gen_s = write_random_dit(src, shapes, dtype, shard_gib=5.0, device=gen_device)
        result.update(source_bytes=written, source_gib=round(written / GIB, 3), generate_s=round(gen_s, 1))
        print(f"source: {written / GIB:.2f} GiB {args.source_dtype} in {gen_s:.0f} s", flush=True)
        for name in args.formats.split(","):
            fmt = format_by_name(name.strip())
            out = scratch / fmt.short
            opts = ConvertOptions(
                model_type="dit", fmt=fmt, layout=args.layout, device=args.device, progress=False
            )
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            with PeakMemory() as mem:
                report = convert(
                    src / INDEX_NAME,
                    out if args.layout == "blocks" else out / f"dit_{fmt.short}.safetensors",
                    opts,
                )
            run = {
                "format": fmt.name,
                "seconds": round(report.seconds, 2),
                "output_bytes": report.bytes_written,
                "output_gib": round(report.bytes_written / GIB, 3),
                "size_vs_bf16_source": round(report.bytes_written / (numel * 2), 4),
                "quantized_layers": report.quantized_layers,
                "tensors": report.tensors,
                "peak_rss_anon_gib": round(mem.peak["rss_anon"] / GIB, 3),
                "peak_rss_gib": round(mem.peak["rss"] / GIB, 3),
                "throughput_gib_per_s": round(written / GIB / report.seconds, 3),
            }
            if args.device.startswith("cuda"):
                run["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 3)
            result["runs"].append(run)
            print(json.dumps(run), flush=True)
            shutil.rmtree(out)  # delete as we go: the disk holds the source + one output
        result["ru_maxrss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 3)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", result["device"]).strip("_")
    path = args.out / f"convert_{tag}_{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
