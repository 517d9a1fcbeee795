"""Probe: compile the one-launch W8A8 quantize+GEMM kernel (``triton_fused``) for sm_90 with the installed
Triton, no GPU needed, and report per config whether it builds and what it builds to.

Every fused tile of the tuning table (``triton_fused._FUSED``, as ``fused_candidates`` offers them to a
Hopper GPU), fp8 and int8, with and without bias, for bf16 activations and outputs and K a multiple of
BLOCK_K (the model's launches: CLIP, M <= 64). ``--full`` adds what the GPU tests launch too: fp16 (and
fp32) activations, fp32 outputs and a ragged K (K % 16 == 0, K % BLOCK_K != 0: EVEN_K=False). Each row:
shared memory, registers and spills (ptxas), wgmma / mma.sync instructions in the PTX (tiles of 64+
rows must use Hopper's wgmma; narrower ones get mma.sync), async copies, and synchronous
activation-tile loads left in the IR (0: both the |max| sweep and the main loop are pipelined). Exit
status 1 if any build fails, spills, exceeds shared memory or lacks its tensor-core instruction.

    PYTHONPATH=. python benchmarks/probes/compile_sm90.py [--full] [--out rows.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
import time
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from lightx2v_quant.quant.kernels import triton_fused as tf

ARCH = 90
SMEM_LIMIT = 232448  # opt-in shared memory per block on an H100 / H200
DIV16 = [["tt.divisibility", 16]]
FORMATS = {"fp8": ("fp8e4nv", 448.0, False), "int8": ("i8", 127.0, True)}
IR_TYPE = {"bf16": "bf16", "fp16": "f16", "fp32": "f32"}  # signature dtype -> its name in the IR


def fused_configs() -> list[tf.TileConfig]:
    """The fused tiles a Hopper GPU is offered, small-M and medium-M lists together, once each."""
    # one M per tuning bucket up to FUSE_MAX_M (the 32-row tile is offered from M = 17 on, ...)
    ms = [16, 32, 64, 128, 256, 512, tf.FUSE_MAX_M]
    offered = list(dict.fromkeys(c for m in ms for c in tf.fused_candidates(m, ARCH, SMEM_LIMIT)))
    table = [c for rows in tf._FUSED.values() for c in rows]
    missing = [c.label() for c in table if c not in offered]
    if missing:  # the probe must cover the whole table: say which tiles Hopper is never offered
        print(f"note: in the table but not offered on sm_{ARCH}: {missing}")
    return offered


def source(cfg: tf.TileConfig, fmt: str, x_ty: str, out_ty: str, has_bias: bool, even_k: bool) -> ASTSource:
    """The ASTSource the JIT builds for an aligned launch (pointers, N, K and the strides % 16 == 0, as
    every Wan / T5 / CLIP width is; M is not specialized). A ragged K is then K % BLOCK_K != 0 only."""
    w_ty, qmax, is_int8 = FORMATS[fmt]
    fn = tf.w8a8_quant_gemm_kernel
    # without bias the launch passes w_scale (fp32) as the unused bias pointer
    sig = {
        "x_ptr": f"*{x_ty}",
        "b_ptr": f"*{w_ty}",
        "c_ptr": f"*{out_ty}",
        "sb_ptr": "*fp32",
        "bias_ptr": f"*{x_ty}" if has_bias else "*fp32",
    }
    ints = ["M", "N", "K", "stride_xm", "stride_bn", "stride_cm"]
    sig.update({name: "i32" for name in ints})
    cons = {
        "QMAX": qmax,
        "IS_INT8": is_int8,
        "BLOCK_M": cfg.block_m,
        "BLOCK_N": cfg.block_n,
        "BLOCK_K": cfg.block_k,
        "GROUP_M": cfg.group_m,
        "EVEN_K": even_k,
        "HAS_BIAS": has_bias,
        "SWEEP_STAGES": tf.SWEEP_STAGES,
    }
    sig.update({name: "constexpr" for name in cons})
    names = list(fn.arg_names)
    aligned = [n for n in sig if sig[n].startswith("*")] + [n for n in ints if n != "M"]
    attrs = {(names.index(n),): DIV16 for n in aligned}
    return ASTSource(fn=fn, signature=sig, constexprs=cons, attrs=attrs)


def ptxas_report(ptx: str) -> dict:
    """Registers and spill bytes from ptxas -v (Triton ships ptxas)."""
    import subprocess
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "k.ptx"
        path.write_text(ptx)
        cmd = [get_ptxas(ARCH).path, f"-arch=sm_{ARCH}a", "-v", str(path), "-o", str(Path(d) / "k.cubin")]
        out = subprocess.run(cmd, check=False, capture_output=True, text=True)
    text = out.stdout + out.stderr
    regs = re.search(r"Used (\d+) registers", text)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    return {
        "ptxas_ok": out.returncode == 0,
        "regs": int(regs.group(1)) if regs else None,
        "spill_bytes": int(spills.group(1)) + int(spills.group(2)) if spills else None,
    }


def compile_one(cfg: tf.TileConfig, fmt: str, x_ty: str, out_ty: str, has_bias: bool, even_k: bool) -> dict:
    row = {
        "config": cfg.label(),
        "format": fmt,
        "x": x_ty,
        "out": out_ty,
        "bias": has_bias,
        "even_k": even_k,
    }
    t0 = time.time()
    try:
        ck = triton.compile(
            source(cfg, fmt, x_ty, out_ty, has_bias, even_k),
            target=GPUTarget("cuda", ARCH, 32),
            options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages},
        )
    except Exception as exc:  # noqa: BLE001 - the probe reports what does not build
        msg = str(exc).strip().splitlines()
        row["error"] = f"{type(exc).__name__}: {msg[0] if msg else ''} ... {msg[-1] if len(msg) > 1 else ''}"
        return row
    ptx, ttgir = ck.asm["ptx"], ck.asm["ttgir"]
    row.update(
        smem=ck.metadata.shared,
        wgmma=ptx.count("wgmma.mma_async"),
        mma_sync=ptx.count("mma.sync"),
        cp_async=ptx.count("cp.async.cg") + ptx.count("cp.async.ca"),
        # a synchronous load of an activation tile left in the IR: some loop's x loads were not pipelined
        sync_x_loads=len(re.findall(rf"tt\.load [^:\n]*: tensor<\d+x\d+x!tt\.ptr<{IR_TYPE[x_ty]}>", ttgir)),
        compile_s=round(time.time() - t0, 2),
        **ptxas_report(ptx),
    )
    problems = []
    # wgmma takes 64 rows per warpgroup: narrower tiles are built with mma.sync (Triton's choice, not a bug)
    if cfg.block_m >= 64 and row["wgmma"] == 0:
        problems.append("no wgmma")
    if cfg.block_m < 64 and row["mma_sync"] == 0:
        problems.append("no tensor-core instruction")
    if row["smem"] > SMEM_LIMIT:
        problems.append("over the shared-memory limit")
    if row["spill_bytes"]:
        problems.append("spills")
    if not row["ptxas_ok"]:
        problems.append("ptxas failed")
    if problems:
        row["problems"] = problems
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also fp16 activations, fp32 outputs, ragged K")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    x_tys = ("bf16", "fp16", "fp32") if args.full else ("bf16",)
    even = (True, False) if args.full else (True,)
    rows = []
    for cfg in fused_configs():
        for fmt, x_ty, has_bias, even_k in itertools.product(FORMATS, x_tys, (True, False), even):
            for out_ty in dict.fromkeys((x_ty, "fp32" if args.full else x_ty)):
                row = compile_one(cfg, fmt, x_ty, out_ty, has_bias, even_k)
                rows.append(row)
                what = f"{row['config']:26s} {fmt:4s} x={x_ty} out={out_ty:4s} bias={int(has_bias)} even_k={int(even_k)}"
                if "error" in row:
                    print(f"{what}  FAILED {row['error'][:300]}", flush=True)
                    continue
                print(
                    f"{what}  ok  smem {row['smem'] // 1024:3d}K regs {row['regs']} spill {row['spill_bytes']} "
                    f"wgmma {row['wgmma']} mma.sync {row['mma_sync']} cp.async {row['cp_async']} sync x loads {row['sync_x_loads']}"
                    f"{'  ' + ', '.join(row['problems']) if 'problems' in row else ''}",
                    flush=True,
                )
    bad = [r for r in rows if "error" in r or "problems" in r]
    print(f"triton {triton.__version__}, sm_{ARCH}: {len(rows)} builds, {len(bad)} failed or flagged")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"arch": ARCH, "triton": triton.__version__, "rows": rows}, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
