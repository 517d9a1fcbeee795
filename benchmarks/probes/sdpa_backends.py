"""Which torch SDPA backend runs Wan-14B self-attention fastest on this GPU (bf16, 40 heads x 128).

    PYTHONPATH=. python benchmarks/probes/sdpa_backends.py --out $OUT/sdpa_backends.json

Times ``F.scaled_dot_product_attention`` with the default choice and with each backend forced
(flash, cuDNN, memory-efficient), and reports which one the default dispatched to (the forced
backend whose output is bit-identical to the default's).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def _time(fn, iters: int = 10) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tokens", type=int, nargs="*", default=[32760])
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    rows = []
    for tokens in args.tokens:
        q, k, v = (torch.randn(1, 40, tokens, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        flops = 4 * tokens * tokens * 128 * 40
        default = F.scaled_dot_product_attention(q, k, v)
        row = {"tokens": tokens, "default_ms": _time(lambda: F.scaled_dot_product_attention(q, k, v))}
        for name, backend in [
            ("flash", SDPBackend.FLASH_ATTENTION),
            ("cudnn", SDPBackend.CUDNN_ATTENTION),
            ("efficient", SDPBackend.EFFICIENT_ATTENTION),
        ]:
            try:
                with sdpa_kernel([backend]):
                    out = F.scaled_dot_product_attention(q, k, v)
                    row[f"{name}_ms"] = _time(lambda: F.scaled_dot_product_attention(q, k, v))
                row[f"{name}_same_as_default"] = bool(torch.equal(out, default))
                row[f"{name}_tflops"] = flops / row[f"{name}_ms"] / 1e9
            except RuntimeError as exc:
                row[f"{name}_error"] = str(exc).splitlines()[0][:200]
        row["default_tflops"] = flops / row["default_ms"] / 1e9
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
