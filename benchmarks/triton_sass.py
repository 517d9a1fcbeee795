"""Compile our Triton kernels for a GPU target WITHOUT a GPU and report registers, spills, shared memory
and the instruction mix of interest (8-bit / 16-bit wgmma, MUFU.EX2, I2F, local memory) from the SASS.

Uses the ptxas / nvdisasm that ship inside the Triton wheel. Meant for reviewing kernels on a CPU-only
machine before spending device time; it measures nothing about speed. Example:

    PYTHONPATH=. python benchmarks/triton_sass.py --arch 90 [--kernel attn] [--sass-out DIR]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
PATTERNS = {
    "IGMMA": r"\bIGMMA\b",
    "QGMMA": r"\bQGMMA\b",
    "HGMMA": r"\bHGMMA\b",
    "HMMA": r"\bHMMA\b",
    "IMMA": r"\bIMMA\b",
    "MUFU.EX2": r"MUFU\.EX2",
    "I2F": r"\bI2F",
    "F2FP": r"\bF2FP",
    "FFMA": r"\bFFMA\b",
    "LDL/STL": r"\b(LDL|STL)\b",
    "LDGSTS": r"\bLDGSTS\b",
    "UTMALDG": r"\bUTMALDG\b",
    "BAR": r"\bBAR\b",
}


def _attn_cases():
    from lightx2v_quant.attention import lowp_triton as m

    ints = ["L_Q", "L_K", "LQP", "LKP", "H", "stride_ob", "stride_ol", "stride_oh"]
    for pv_fp8 in (True, False):
        for bm, bn, warps, stages, maxnreg in m.CONFIGS:
            s = {
                "desc_q": f"tensordesc<i8[{bm},128]>",
                "qs_ptr": "*fp32",
                "desc_k": f"tensordesc<i8[{bn},128]>",
                "ks_ptr": "*fp32",
                "desc_v": f"tensordesc<fp8e4nv[128,{bn}]>" if pv_fp8 else f"tensordesc<bf16[{bn},128]>",
                "vs_ptr": "*fp32",
                "vm_ptr": "*fp32",
                "o_ptr": "*bf16",
                **{n: "i32" for n in ints},
            }
            const = {"D": 128, "QB": 128, "PV_FP8": pv_fp8, "BLOCK_M": bm, "BLOCK_N": bn}
            name = f"attn_{'fp8pv' if pv_fp8 else 'bf16pv'}_{bm}x{bn}_w{warps}_s{stages}_r{maxnreg}"
            div16 = [n for n in ints if n.startswith("stride") or n in ("LQP", "LKP")]
            opts = {"num_warps": warps, "num_stages": stages, **({"maxnreg": maxnreg} if maxnreg else {})}
            yield name, m._attn_fwd_kernel, s, const, opts, div16


def _extra_cases():
    """Other modules expose ``SASS_CASES()`` yielding (name, fn, signature, constexprs, options, div16)."""
    for mod in (
        "lightx2v_quant.attention.lowp_quant",
        "lightx2v_quant.fused.norm",
        "lightx2v_quant.fused.gelu",
        "lightx2v_quant.fused.rope",
    ):
        try:
            module = __import__(mod, fromlist=["SASS_CASES"])
        except ImportError:
            continue
        yield from getattr(module, "SASS_CASES", lambda: [])()


def compile_case(fn, sig, const, opts, arch: int, div16=()):
    """``div16``: int arguments that are multiples of 16 at run time; pointers are assumed 16-byte aligned
    (what Triton's launcher specializes on, and what lets loads vectorize and pipeline)."""
    for k in const:
        sig[k] = "constexpr"
    names = fn.arg_names
    attrs = {
        (names.index(n),): [["tt.divisibility", 16]]
        for n, t in sig.items()
        if (t.startswith("*") or n in div16) and n in names
    }
    src = ASTSource(fn, sig, constexprs=const, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)


def ptxas_report(ptx: str, arch: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "k.ptx"
        p.write_text(ptx)
        sm = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        out = subprocess.run(
            [str(BIN / "ptxas"), f"-arch={sm}", "-v", str(p), "-o", str(Path(d) / "k.cubin")],
            capture_output=True,
            text=True,
        )
    text = out.stdout + out.stderr
    regs = re.search(r"Used (\d+) registers", text)
    spill_st = re.search(r"(\d+) bytes spill stores", text)
    spill_ld = re.search(r"(\d+) bytes spill loads", text)
    stack = re.search(r"(\d+) bytes stack frame", text)
    return {
        "regs": int(regs.group(1)) if regs else None,
        "spill": (int(spill_st.group(1)) if spill_st else 0) + (int(spill_ld.group(1)) if spill_ld else 0),
        "stack": int(stack.group(1)) if stack else 0,
    }


def sass(cubin: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        return subprocess.run([str(BIN / "nvdisasm"), "-c", f.name], capture_output=True, text=True).stdout
    finally:
        os.unlink(f.name)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--kernel", default="", help="substring filter on case names")
    ap.add_argument("--sass-out", default=None, help="folder to write each case's SASS and TTGIR")
    args = ap.parse_args(argv)
    rows = []
    for name, fn, sig, const, opts, div16 in [*_attn_cases(), *_extra_cases()]:
        if args.kernel not in name:
            continue
        try:
            k = compile_case(fn, dict(sig), dict(const), opts, args.arch, div16)
        except Exception as exc:  # report and continue: one broken case should not hide the others
            rows.append((name, f"COMPILE ERROR: {str(exc).splitlines()[0][:150]}"))
            continue
        rep = ptxas_report(k.asm["ptx"], args.arch)
        code = sass(k.asm["cubin"])
        counts = collections.OrderedDict((key, len(re.findall(p, code))) for key, p in PATTERNS.items())
        if args.sass_out:
            out = Path(args.sass_out)
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{name}.sass").write_text(code)
            (out / f"{name}.ttgir").write_text(k.asm["ttgir"])
        mix = " ".join(f"{key}={v}" for key, v in counts.items() if v)
        rows.append(
            (
                name,
                f"regs={rep['regs']} spill={rep['spill']}B stack={rep['stack']}B "
                f"smem={k.metadata.shared}B | {mix}",
            )
        )
    width = max((len(r[0]) for r in rows), default=10)
    for name, text in rows:
        print(f"{name:<{width}}  {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
