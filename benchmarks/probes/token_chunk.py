"""Probe: does the DIT's token chunking of the output projections and the FFN (``speed.token_chunk``)
cost speed? Times one Wan-14B forward (480p, random weights) per chunk size (0: all tokens at once),
same process and input.

    PYTHONPATH=. python benchmarks/probes/token_chunk.py --out $OUT/token_chunk.json --quant bf16 fp8-triton
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from benchmarks.dit import _timed_ms, latent_shape, make_inputs
from lightx2v_quant.models.wan import WanDiTConfig, random_dit
from lightx2v_quant.models.wan.speed import configure_dit
from lightx2v_quant.quant.apply import prepare_model


def measure(quant: str, chunks: list[int], residual: str) -> list[dict]:
    """Rows of (chunk, median ms, peak GiB) for one scheme, two interleaved rounds (clocks drift as the
    GPU heats)."""
    cfg = WanDiTConfig.preset("wan2.1-t2v-14b")
    inp = make_inputs(cfg, latent_shape("480p", 81), torch.bfloat16, 0, torch.device("cuda"))
    model = random_dit(cfg, torch.bfloat16, "cuda", seed=0, quant=None if quant == "bf16" else quant)
    prepare_model(model)
    rows = []
    with torch.inference_mode():
        for chunk in chunks * 2:
            configure_dit(model, attention="sdpa", fused=True, residual=residual, token_chunk=chunk)
            model(**inp)  # warm-up (autotuning for new chunk shapes)
            torch.cuda.reset_peak_memory_stats()
            ms = statistics.median(_timed_ms(lambda: model(**inp), torch.device("cuda"))[0] for _ in range(3))
            row = {"quant": quant, "chunk": chunk, "ms": round(ms, 1),
                   "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--quant", nargs="+", default=["bf16"])
    p.add_argument("--chunks", nargs="+", type=int, default=[8192, 16384, 0])
    p.add_argument("--residual", default="fp32")
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    rows = []
    for quant in a.quant:
        rows += measure(quant, a.chunks, a.residual)
        torch.cuda.empty_cache()
    with open(a.out, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "residual": a.residual, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
