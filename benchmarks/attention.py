"""Attention backends at Wan-14B shapes on a GPU: time (median, CUDA events via triton.testing.do_bench),
throughput, accuracy against fp32 SDPA, and our Triton kernel per tile config (what the autotuner picks
from). JSON + markdown into --out. About a minute on an H100 (480p; add 720p with --res 480p 720p).

    PYTHONPATH=. python benchmarks/attention.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

SHAPES = {"480p": 32760, "720p": 75600}  # self-attention tokens of an 81-frame video
HEADS, HEAD_DIM, TEXT = 40, 128, 512


def _inputs(lq: int, lk: int, seed: int, dit_like: bool) -> tuple[torch.Tensor, ...]:
    """Random [1, L, 40, 128] bf16 q/k/v; ``dit_like`` adds per-channel offsets to k and v (as trained
    models have, which smoothing removes) and a larger q scale (peakier softmax)."""
    g = torch.Generator("cuda").manual_seed(seed)
    q = torch.randn(1, lq, HEADS, HEAD_DIM, device="cuda", generator=g)
    k = torch.randn(1, lk, HEADS, HEAD_DIM, device="cuda", generator=g)
    v = torch.randn(1, lk, HEADS, HEAD_DIM, device="cuda", generator=g)
    if dit_like:
        q = q * 2.0
        k = k + 3.0 * torch.randn(1, 1, HEADS, HEAD_DIM, device="cuda", generator=g)
        v = v + torch.randn(1, 1, HEADS, HEAD_DIM, device="cuda", generator=g)
    return tuple(t.to(torch.bfloat16) for t in (q, k, v))


def _reference(q, k, v) -> torch.Tensor:
    """fp32 SDPA (memory-efficient kernel) on the bf16 inputs, head group by head group."""
    outs = []
    for h in range(0, HEADS, 8):
        sl = slice(h, h + 8)
        o = torch.nn.functional.scaled_dot_product_attention(
            *(t[:, :, sl].transpose(1, 2).float() for t in (q, k, v))
        )
        outs.append(o.transpose(1, 2))
    return torch.cat(outs, dim=2)


def _err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref).norm() / ref.norm())


def _measure(name: str, fn, ref: torch.Tensor, ops: float, args: argparse.Namespace) -> dict:
    """Time ``fn`` (median ms) and its error against ``ref``; a config that fails is reported, not fatal."""
    import triton

    try:
        out = fn()
        ms = triton.testing.do_bench(fn, warmup=args.warmup_ms, rep=args.rep_ms, return_mode="median")
    except Exception as exc:
        return {"backend": name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    err = _err(out, ref) if isinstance(out, torch.Tensor) else None
    return {
        "backend": name,
        "ms": round(ms, 3),
        "tops": round(ops / ms / 1e9, 1),
        "rel_err": None if err is None else round(err, 5),
    }


def _one_shape(lq: int, lk: int, data: str, landscape: bool, runnable: list[str], args) -> list[dict]:
    from lightx2v_quant.attention.lowp_quant import quantize_qkv
    from lightx2v_quant.attention.lowp_triton import CONFIGS, LOG2E, lowp_attention_config
    from lightx2v_quant.models.wan.attention import get_backend

    q, k, v = _inputs(lq, lk, args.seed, data == "dit-like")
    ref = _reference(q, k, v)
    ops = 4 * HEADS * lq * lk * HEAD_DIM
    cases = [(b, lambda b=b: get_backend(b)(q, k, v)) for b in runnable]
    if landscape:  # our kernel per tile config: what the autotuner chooses from
        for pv in (True, False):
            for cfg in CONFIGS:
                name = f"{'int8qk-fp8pv' if pv else 'int8qk'} {cfg}"
                cases.append((name, lambda pv=pv, cfg=cfg: lowp_attention_config(q, k, v, pv, cfg)))
        cases.append(("quantize q/k/v only (fp8 V)", lambda: quantize_qkv(q, k, v, LOG2E / HEAD_DIM**0.5)))
    rows = []
    for name, fn in cases:
        rows.append(_measure(name, fn, ref, ops, args))
        print(rows[-1], flush=True)
    return rows


def run(args: argparse.Namespace) -> dict:
    import triton

    from lightx2v_quant.models.wan.attention import backend_problem, backends

    major, minor = torch.cuda.get_device_capability()
    sm = major * 10 + minor
    skipped = {b: why for b in backends() if (why := backend_problem(b, "cuda", sm))}
    runnable = [b for b in backends() if b not in skipped]
    rows = []
    for res in args.res:
        for kind, lk in (("self", SHAPES[res]), ("cross", TEXT)):
            for data in ("random", "dit-like"):
                landscape = kind == "self" and data == "random"
                for row in _one_shape(SHAPES[res], lk, data, landscape, runnable, args):
                    rows.append({"res": res, "kind": kind, "data": data, **row})
                torch.cuda.empty_cache()
    props = torch.cuda.get_device_properties(0)
    return {
        "benchmark": "attention",
        "heads": HEADS,
        "head_dim": HEAD_DIM,
        "rows": rows,
        "skipped": skipped,
        "device": props.name,
        "capability": f"{major}.{minor}",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
    }


def markdown(r: dict) -> str:
    lines = [
        f"# Attention at Wan-14B shapes (40 heads x 128), {r['device']}",
        "",
        "| res | kind | data | backend | ms | TOPS | rel err vs fp32 |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        if "error" in row:
            lines.append(
                f"| {row['res']} | {row['kind']} | {row['data']} | {row['backend']} | failed: "
                f"{row['error'][:80]} | | |"
            )
        else:
            lines.append(
                f"| {row['res']} | {row['kind']} | {row['data']} | {row['backend']} | {row['ms']} | "
                f"{row['tops']} | {row['rel_err']} |"
            )
    lines += ["", "Not run here: " + ("; ".join(f"{k} ({v})" for k, v in r["skipped"].items()) or "none"), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--res", nargs="+", default=["480p"], choices=sorted(SHAPES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup-ms", type=int, default=50)
    p.add_argument("--rep-ms", type=int, default=300)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/attention.py needs a CUDA GPU", file=sys.stderr)
        return 2
    result = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "attention.json").write_text(json.dumps(result, indent=2))
    text = markdown(result)
    (out / "attention.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
