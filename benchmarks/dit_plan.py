"""Plans of benchmarks/dit.py: many DIT configurations in ONE process, each model built once and reused.

Per entry: median forward time (CUDA events), peak memory over the timed forwards (weights included), and
the one-step quality of the output against OUR bf16 forward (SDPA, official unfused path) on the same
input and weights: relative L2 error, SNR and PSNR (peak = max |reference|). Results are written after
every entry (a time-out keeps what finished), then a table is printed.
"""

from __future__ import annotations

import gc
import json
import math
import statistics
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from lightx2v_quant.models.wan import WanDiTConfig, random_dit
from lightx2v_quant.models.wan.speed import configure_dit
from lightx2v_quant.quant.apply import kernels_used, prepare_model

GIB = 1024**3
LOWP = "int8qk-fp8pv"


@dataclass(frozen=True)
class Entry:
    name: str
    impl: str = "ours"  # ours | diffusers | diffusers-fp8 (torchao float8 per-row)
    quant: str | None = None  # our scheme; None = bf16
    attention: str = "sdpa"
    cross_attention: str | None = None  # None = same as attention
    fused: bool = False
    compile: bool = False
    res: str = "480p"
    warmup: int = 1
    iters: int = 2
    reference: bool = False  # this entry's output is the quality reference of its resolution
    residual: str = "fp32"  # speed.residual: fp32 (official) or run_dtype (bf16, as LightX2V / diffusers)
    token_chunk: int | None = None  # speed.token_chunk (None: 128 per SM; 0: output projections / FFN on all tokens at once)
    fuse_gelu: bool = True  # configure_dit(fuse_gelu=...): the FFN's GELU + quantization in one kernel
    fuse_residual: bool = True  # configure_dit(fuse_residual=...): residual adds in the GEMMs' epilogues


def _ours(name, quant=None, attention="sdpa", fused=True, **kw) -> Entry:
    """Our model; the low-precision backends run self-attention only unless cross_attention is given
    (cross-attention is ~1.5% of the attention FLOPs at 480p and its error is not worth that)."""
    return Entry(
        name,
        "ours",
        quant,
        attention,
        kw.pop("cross_attention", "sdpa" if attention in (LOWP, "int8qk") else None),
        fused,
        **kw,
    )


def _plan(kind: str) -> list[Entry]:
    ref = _ours("ours bf16 sdpa (official path)", fused=False, reference=True)
    quick = [
        ref,
        _ours("ours bf16 sdpa fused"),
        _ours(f"ours bf16 {LOWP} fused", attention=LOWP),
        Entry("diffusers bf16 compiled", "diffusers", compile=True, warmup=2),
        _ours("ours fp8-torch sdpa fused", "fp8-torch"),
        _ours(f"ours fp8-torch {LOWP} fused", "fp8-torch", LOWP),
        _ours(f"ours fp8-torch {LOWP} fused compiled", "fp8-torch", LOWP, compile=True, warmup=2),
    ]
    if kind == "quick":
        return quick
    default = quick[:3] + [
        _ours("ours bf16 int8qk fused", attention="int8qk"),
        quick[3],
        Entry("diffusers fp8 (torchao) compiled", "diffusers-fp8", compile=True, warmup=2),
        _ours("ours fp8-torch sdpa (official path)", "fp8-torch", fused=False),
        *quick[4:],
        _ours(f"ours int8-torch {LOWP} fused", "int8-torch", LOWP),
        _ours(f"ours fp8-triton {LOWP} fused", "fp8-triton", LOWP),
        replace(ref, name="ours bf16 sdpa (official path) 720p", res="720p", iters=1),
        _ours(f"ours fp8-torch {LOWP} fused 720p", "fp8-torch", LOWP, res="720p", iters=1),
    ]
    if kind == "default":
        return default
    full = default + [
        _ours(
            f"ours fp8-torch {LOWP} fused compiled 720p",
            "fp8-torch",
            LOWP,
            compile=True,
            res="720p",
            warmup=2,
            iters=1,
        ),
        _ours("ours bf16 sdpa fused compiled", compile=True, warmup=2),
        _ours("ours fp8-triton sdpa fused", "fp8-triton"),
        _ours(f"ours fp8-triton {LOWP} fused compiled", "fp8-triton", LOWP, compile=True, warmup=2),
        _ours(f"ours fp8-torch {LOWP} (cross-attention too) fused", "fp8-torch", LOWP, cross_attention=LOWP),
        _ours("ours fp8-torch int8qk fused", "fp8-torch", "int8qk"),
        Entry("diffusers bf16 eager", "diffusers"),
        # the residual stream in bf16 (speed.residual=run_dtype), as diffusers and LightX2V's default keep it
        _ours("ours bf16 sdpa fused res-bf16", residual="run_dtype"),
        _ours("ours bf16 sdpa fused compiled res-bf16", compile=True, warmup=2, residual="run_dtype"),
        _ours("ours fp8-triton sdpa fused res-bf16", "fp8-triton", residual="run_dtype"),
        _ours(f"ours fp8-triton {LOWP} fused res-bf16", "fp8-triton", LOWP, residual="run_dtype"),
        _ours(
            f"ours fp8-triton {LOWP} fused compiled res-bf16",
            "fp8-triton",
            LOWP,
            compile=True,
            warmup=2,
            residual="run_dtype",
        ),
        # all tokens at once (speed.token_chunk=0): bf16 has memory to spare; the GEMMs run unsplit
        _ours("ours bf16 sdpa fused unchunked", token_chunk=0),
        _ours("ours bf16 sdpa fused unchunked res-bf16", token_chunk=0, residual="run_dtype"),
        # int8 linears on the Gluon GEMM (Hopper), next to the fp8 entries above
        _ours("ours int8-triton sdpa fused", "int8-triton"),
        _ours(
            f"ours int8-triton {LOWP} fused compiled res-bf16",
            "int8-triton",
            LOWP,
            compile=True,
            warmup=2,
            residual="run_dtype",
        ),
        # the same with our attention in cross-attention too (q's norm + int8 in one pass)
        _ours(
            f"ours int8-triton {LOWP} (cross-attention too) fused compiled res-bf16",
            "int8-triton",
            LOWP,
            cross_attention=LOWP,
            compile=True,
            warmup=2,
            residual="run_dtype",
        ),
    ]
    for scheme in ("int8-triton", "fp8-triton"):  # the fastest settings without the fused GELU + quantization
        full.append(
            _ours(
                f"ours {scheme} {LOWP} fused compiled res-bf16 no-gelu-q",
                scheme,
                LOWP,
                compile=True,
                warmup=2,
                residual="run_dtype",
                fuse_gelu=False,
            )
        )
        full.append(  # the same without the residual adds in the GEMMs' epilogues
            _ours(
                f"ours {scheme} {LOWP} fused compiled res-bf16 no-res-epilogue",
                scheme,
                LOWP,
                compile=True,
                warmup=2,
                residual="run_dtype",
                fuse_residual=False,
            )
        )
    full.append(  # the best settings with the token chunk of earlier runs (16384: a partial last GEMM wave)
        _ours(
            f"ours int8-triton {LOWP} fused compiled res-bf16 chunk-16384",
            "int8-triton",
            LOWP,
            compile=True,
            warmup=2,
            residual="run_dtype",
            token_chunk=16384,
        )
    )
    for scheme in (
        "int8-triton",
        "fp8-vllm",
        "fp8-sgl",
        "int8-vllm",
        "fp8-b128-deepgemm",
        "int8-torchao",
        "fp8-torchao",
    ):
        full.append(_ours(f"ours {scheme} {LOWP} fused", scheme, LOWP))
    return full


PLANS = ("quick", "default", "full")


def _matches(name: str, pattern: str) -> bool:
    """--only: a substring of the entry name, or the whole name when the pattern ends with '$'."""
    return name == pattern[:-1] if pattern.endswith("$") else pattern in name


def _groups(entries: list[Entry]) -> list[tuple[tuple, list[Entry]]]:
    """Entries grouped by the model they need, in order of first use; compiled entries last in a group.
    Our bf16 model also serves the diffusers peers (same tensors), so those groups follow it."""
    order: dict[tuple, list[Entry]] = {}
    for e in entries:
        key = ("bf16", None) if e.impl != "ours" or e.quant is None else ("ours", e.quant)
        order.setdefault(key, []).append(e)
    out = []
    for key, es in order.items():
        rank = {"ours": 0, "diffusers": 1, "diffusers-fp8": 2}
        es = sorted(es, key=lambda e: (rank[e.impl], e.compile, not e.reference))
        out.append((key, es))
    return out


def quality(out: torch.Tensor, ref: torch.Tensor | None) -> dict[str, Any]:
    if ref is None:
        return {}
    err = float((out.double() - ref.double()).norm() / ref.double().norm())
    mse = float((out.double() - ref.double()).pow(2).mean())
    peak = float(ref.double().abs().max())
    if mse == 0:
        return {"rel_err": 0.0, "snr_db": None, "psnr_db": None}
    return {
        "rel_err": round(err, 6),
        "snr_db": round(-20 * math.log10(err), 2),
        "psnr_db": round(10 * math.log10(peak**2 / mse), 2),
    }


def _time(
    fn: Callable[[], torch.Tensor], warmup: int, iters: int, cuda: bool
) -> tuple[list[float], float | None, torch.Tensor, float]:
    """(times ms, peak GiB over the timed calls or None off CUDA, last output, warm-up seconds)."""
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t0 = time.perf_counter()
    out = None
    for _ in range(warmup):
        out = fn()
    sync()
    warm_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iters):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            sync()
            times.append(start.elapsed_time(end))
        else:  # CPU smoke runs of the plan machinery
            t1 = time.perf_counter()
            out = fn()
            times.append((time.perf_counter() - t1) * 1e3)
    return times, (torch.cuda.max_memory_allocated() / GIB if cuda else None), out, warm_s


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    torch._dynamo.reset()


def run_plan(
    kind: str,
    model_name: str,
    seed: int,
    out_dir: Path,
    make_inputs,
    latent_shape,
    forward_flops,
    device_info: dict,
    only: list[str] | None = None,
    device: str = "cuda",
    frames: int = 81,
    entries: list[Entry] | None = None,
) -> list[dict]:
    """Run plan ``kind`` (or the given ``entries``); JSON to out_dir after every entry; the result rows."""
    from benchmarks.dit_peer import diffusers_from_ours, peer_forward, torchao_float8

    cfg = WanDiTConfig.preset(model_name)
    cuda = device.startswith("cuda")
    entries = [e for e in (entries or _plan(kind)) if not only or any(_matches(e.name, s) for s in only)]
    refs: dict[str, torch.Tensor] = {}
    inputs: dict[str, dict] = {}
    results: list[dict] = []
    t_start = time.perf_counter()

    def record(e: Entry, **fields) -> None:
        results.append({"entry": asdict(e), **fields})
        (out_dir / f"dit_plan_{kind}.json").write_text(
            json.dumps(
                {
                    "plan": kind,
                    "model": model_name,
                    "seed": seed,
                    **device_info,
                    "torch": torch.__version__,
                    "elapsed_s": round(time.perf_counter() - t_start, 1),
                    "results": results,
                },
                indent=2,
            )
        )
        r = results[-1]
        print(
            f"[{time.perf_counter() - t_start:6.0f}s] {e.name}: "
            + (
                f"{r['median_ms']:.0f} ms, peak {r['peak_gib']} GiB, {r.get('psnr_db', '-')} dB PSNR"
                if "median_ms" in r
                else f"FAILED {r.get('error', '')[:200]}"
            ),
            flush=True,
        )

    def inp(res: str) -> dict:
        if res not in inputs:
            inputs[res] = make_inputs(
                cfg, latent_shape(res, frames), torch.bfloat16, seed, torch.device(device)
            )
        return inputs[res]

    bf16_model = None
    for (kind_key, quant), group in _groups(entries):
        model = peer = None
        try:
            t0 = time.perf_counter()
            if kind_key == "bf16":
                model = bf16_model = bf16_model or random_dit(cfg, torch.bfloat16, device, seed=seed)
            else:
                if bf16_model is not None:  # our bf16 model (and any peer sharing it) is done
                    bf16_model = None
                    _free()
                model = random_dit(cfg, torch.bfloat16, device, seed=seed, quant=quant)
            prepare_model(model)
            if cuda:
                torch.cuda.synchronize()
            build_s = time.perf_counter() - t0
        except Exception as exc:  # a scheme that cannot run here: recorded, the plan goes on
            for e in group:
                record(e, error=f"build: {type(exc).__name__}: {exc}")
            continue
        for e in group:
            try:
                x = inp(e.res)
                if e.impl == "ours":
                    report = configure_dit(
                        model,
                        attention=e.attention,
                        cross_attention=e.cross_attention,
                        fused=e.fused,
                        compile=e.compile,
                        residual=e.residual,
                        token_chunk=e.token_chunk,
                        fuse_gelu=e.fuse_gelu,
                        fuse_residual=e.fuse_residual,
                    )
                    with torch.inference_mode():
                        times, peak, out, warm_s = _time(lambda: model(**x), e.warmup, e.iters, cuda)
                    extra = {"speed": report, "kernels": kernels_used(model)}
                else:
                    if e.impl == "diffusers-fp8" and not getattr(peer, "_fp8", False):
                        peer = diffusers_from_ours(model)  # fresh: quantizing replaces the shared weights
                        model = bf16_model = None  # ours is done; the peer holds what it still needs
                        _free()
                        torchao_float8(peer)
                        peer._fp8 = True
                    elif e.impl == "diffusers" and (peer is None or getattr(peer, "_fp8", False)):
                        peer = diffusers_from_ours(model)
                    torch._dynamo.reset()
                    if e.compile:
                        peer.compile_repeated_blocks(fullgraph=True)
                    with torch.inference_mode():
                        times, peak, out, warm_s = _time(
                            lambda: peer_forward(peer, x), e.warmup, e.iters, cuda
                        )
                    extra = {}
                if e.reference:
                    refs[e.res] = out.float().clone()
                med = statistics.median(times)
                tokens = math.prod(s // p for s, p in zip(latent_shape(e.res, frames), cfg.patch_size))
                flops = forward_flops(cfg, tokens, cfg.text_len)
                record(
                    e,
                    median_ms=round(med, 1),
                    times_ms=[round(t, 1) for t in times],
                    peak_gib=None if peak is None else round(peak, 2),
                    warmup_s=round(warm_s, 1),
                    build_s=round(build_s, 1),
                    tokens=tokens,
                    tflops_est=round(flops / med / 1e9, 1),
                    output_finite=bool(torch.isfinite(out).all()),
                    **quality(out.float(), refs.get(e.res)),
                    **extra,
                )
            except Exception as exc:
                record(e, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-2000:])
            finally:
                torch._dynamo.reset()
        model = peer = None
        _free()
    return results


def table(results: list[dict], device: str) -> str:
    base = {
        r["entry"]["res"]: r["median_ms"] for r in results if r["entry"]["reference"] and "median_ms" in r
    }
    peers = {
        r["entry"]["impl"]: r["median_ms"]
        for r in results
        if r["entry"]["impl"] != "ours" and r["entry"]["compile"] and "median_ms" in r
    }
    lines = [
        f"# Wan2.1-14B DIT, one forward, random weights - {device}",
        "",
        "| configuration | res | median ms | x ours bf16 | x diffusers bf16 c. | x diffusers fp8 c. "
        "| peak GiB | rel err | PSNR dB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        e = r["entry"]
        if "median_ms" not in r:
            lines.append(f"| {e['name']} | {e['res']} | failed: {r['error'][:80]} | | | | | | |")
            continue
        ms = r["median_ms"]

        def ratio(ref):
            return f"{ref / ms:.2f}" if ref else "-"

        same_res = e["res"] == "480p"
        lines.append(
            f"| {e['name']} | {e['res']} | {ms:.0f} | {ratio(base.get(e['res']))} | "
            f"{ratio(peers.get('diffusers')) if same_res else '-'} | "
            f"{ratio(peers.get('diffusers-fp8')) if same_res else '-'} | {r['peak_gib']} | "
            f"{r.get('rel_err', '-')} | {r.get('psnr_db', '-')} |"
        )
    lines += [
        "",
        "Ratios are speed-ups (reference time / this time). Quality: output vs ours bf16 SDPA official "
        "path, same input and weights; PSNR peak = max |reference|.",
    ]
    return "\n".join(lines) + "\n"
