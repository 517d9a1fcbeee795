"""Probe: variants of the Gluon attention kernel (``lowp_gluon``), timed short and sustained.

    PYTHONPATH=. python benchmarks/probes/attn_variants.py --out $OUT/attn_variants.json \
        [--variants current no-rescale] [--file old=/tmp/old_lowp_gluon.py] [--seconds 4]

Each variant is a copy of ``lowp_gluon.py`` loaded as its own module: ``current`` as it is, the others
with a text patch applied (``PATCHES``; a patch that no longer applies is reported, not run) or read
from a file (``--file NAME=PATH``, e.g. the kernel of an older commit from ``git show``; a module that
defines ``prepare_inputs(qq)`` gets its quantized inputs through it, outside the timing). Per variant, at
Wan-14B's 480p self-attention shape (32,760 tokens x 40 heads, random data, quantization excluded):

- ``ms``: ``triton.testing.do_bench`` (short bursts, the GPU below its power cap);
- ``sustained_ms``: back-to-back launches for ``--seconds`` (as in a DIT forward: the H100 runs at its
  700 W cap and lowers its clock), with the SM clock and board power sampled by nvidia-smi;
- the relative error against bf16 SDPA and against the first variant, on this shape and on smaller ones
  with growing keys and sharp attention (``no-rescale`` is a bound: its output is wrong by design).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

KERNEL = Path(__file__).resolve().parents[2] / "lightx2v_quant" / "attention" / "lowp_gluon.py"

# name -> [(old, new), ...] applied to the current kernel's source
PATCHES = {
    # bound: O is never rescaled (wrong output): what every rescale instruction costs
    "no-rescale": [
        (
            "        return p8, m_new, l_i, _rescale(o, gl.expand_dims(gl.convert_layout(alpha, row_o), 1))\n",
            "        return p8, m_new, l_i, o\n",
        )
    ],
}


def load_variant(name: str, source: str, tmp: Path):
    path = tmp / f"lowp_gluon_{name.replace('-', '_')}.py"  # Gluon needs the source in a file
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def patched(name: str) -> str:
    src = KERNEL.read_text()
    for old, new in PATCHES[name]:
        if src.count(old) != 1:
            raise ValueError(f"patch {name!r} no longer applies to lowp_gluon.py: {old.strip()[:80]!r}")
        src = src.replace(old, new)
    return src


class Sampler:
    """nvidia-smi SM clock (MHz) and board power (W) every 0.2 s, in a thread."""

    def __init__(self):
        self.samples: list[tuple[float, float, float]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        query = ["nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits"]
        while not self._stop:
            try:
                out = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout.split(",")
                self.samples.append((time.time(), float(out[0]), float(out[1])))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                pass
            time.sleep(0.2)

    def mean(self, t0: float, t1: float) -> tuple[float | None, float | None]:
        window = [(c, w) for t, c, w in self.samples if t0 <= t <= t1]
        if not window:
            return None, None
        return sum(c for c, _ in window) / len(window), sum(w for _, w in window) / len(window)

    def spread(self, t0: float, t1: float) -> dict:
        """The samples between t0 and t1: how many, the ranges of clock and power, and the share of power
        samples within 3% of the highest (the cap, when the GPU sits at it)."""
        window = [(c, w) for t, c, w in self.samples if t0 <= t <= t1]
        if not window:
            return {"samples": 0}
        clocks, watts = [c for c, _ in window], [w for _, w in window]
        return {
            "samples": len(window),
            "sm_mhz_min_max": [min(clocks), max(clocks)],
            "watts_min_max": [min(watts), max(watts)],
            "share_within_3pct_of_max_watts": round(sum(w >= 0.97 * max(watts) for w in watts) / len(watts), 3),
        }

    def stop(self):
        self._stop = True

    def sustained(self, fn, seconds: float, batch: int = 10) -> dict:
        """``fn()`` back to back for ``seconds`` (after one warm call; ``batch`` calls between host syncs), as
        in a DIT forward: mean GPU time per call from CUDA events, and the clock and power sampled after the
        first second."""
        fn()
        torch.cuda.synchronize()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0, n = time.time(), 0
        start.record()
        while time.time() - t0 < seconds:
            for _ in range(batch):
                fn()
            n += batch
            torch.cuda.synchronize()
        stop.record()
        torch.cuda.synchronize()
        clock, watts = self.mean(t0 + 1.0, time.time())
        return {"sustained_ms": start.elapsed_time(stop) / n, "launches": n, "sm_mhz": clock, "watts": watts}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--variants", nargs="*", default=["current", "no-rescale"])
    p.add_argument("--file", nargs="*", default=[], help="NAME=PATH: a lowp_gluon.py to load as variant NAME")
    p.add_argument("--seconds", type=float, default=4.0, help="sustained run per variant (0: skip)")
    p.add_argument("--rounds", type=int, default=2, help="sustained runs per variant, interleaved")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    import triton

    from lightx2v_quant.attention import lowp_quant, lowp_triton

    tmp = Path(tempfile.mkdtemp(prefix="attn_variants_"))
    sources = {}
    for name in a.variants:
        sources[name] = KERNEL.read_text() if name == "current" else patched(name)
    for item in a.file:
        name, _, path = item.partition("=")
        sources[name] = Path(path).read_text()
    mods = {name: load_variant(name, src, tmp) for name, src in sources.items()}

    def rel(x, y):
        return ((x.float() - y.float()).norm() / y.float().norm()).item()

    res = {"device": torch.cuda.get_device_name(), "variants": list(mods), "cases": [], "sustained": []}
    cases = [("growing keys", 4100, 4100, 4, "ramp"), ("sharp", 4100, 4100, 4, "peaky"), ("ragged", 1000, 300, 2, ""),
             ("wan 480p", 32760, 32760, 40, "")]
    for tag, lq, lk, heads, data in cases:
        g = torch.Generator("cuda").manual_seed(0)
        q, k, v = (torch.randn(1, n, heads, 128, device="cuda", generator=g, dtype=torch.bfloat16) for n in (lq, lk, lk))
        if data == "ramp":
            k = (k * torch.linspace(0.2, 3.0, lk, device="cuda")[None, :, None, None]).to(k.dtype)
        elif data == "peaky":
            q = q * 4
        ref = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
        qq = lowp_quant.quantize_qkv(q, k, v, sm_scale=128**-0.5 * lowp_triton.LOG2E, pv_fp8=True)
        # kernels that read V^T in key order (lowp_quant.key_order; older copies read the natural order)
        qq_ordered = lowp_quant.quantize_qkv(
            q, k, v, sm_scale=128**-0.5 * lowp_triton.LOG2E, pv_fp8=True, key_order=True
        )
        row, first = {"case": tag, "lq": lq, "lk": lk, "heads": heads}, None
        inputs = {}
        for name, m in mods.items():
            try:
                # a variant may store its inputs differently (e.g. V's keys reordered): prepare_inputs
                if hasattr(m, "prepare_inputs"):
                    inputs[name] = m.prepare_inputs(qq)
                else:
                    inputs[name] = qq_ordered if "v_key_order" in sources[name] else qq
                out = m.launch(inputs[name], lq, lk, heads, torch.bfloat16)
                torch.cuda.synchronize()
            except Exception as exc:  # a variant that does not build or run here
                row[name + " error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                continue
            first = out if first is None else first
            row[name + " err_vs_sdpa"] = rel(out, ref)
            row[name + " err_vs_first"] = rel(out, first)
            if tag == "wan 480p":
                row[name + " ms"] = triton.testing.do_bench(
                    lambda m=m, x=inputs[name]: m.launch(x, lq, lk, heads, torch.bfloat16), warmup=10, rep=300
                )
        res["cases"].append(row)
        print(json.dumps(row), flush=True)
    if a.seconds > 0:  # q, k, v of the last (Wan) case
        sampler = Sampler()
        for _ in range(a.rounds):
            for name, m in mods.items():
                if name + " ms" not in res["cases"][-1]:
                    continue
                x = inputs[name]
                run = sampler.sustained(lambda m=m, x=x: m.launch(x, lq, lk, heads, torch.bfloat16), a.seconds)
                entry = {"variant": name, **run}
                res["sustained"].append(entry)
                print(json.dumps(entry), flush=True)
        sampler.stop()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
