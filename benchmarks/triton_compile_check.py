"""Compile every Triton GEMM tile candidate ahead of time for a GPU architecture, no GPU needed.

For each kernel kind and candidate config (the tables in ``triton_tuning``) it reports shared memory,
registers per thread, spilled bytes (from ptxas) and whether the main loop uses Hopper's wgmma and TMA.
Run it on any machine with Triton installed (Triton ships ptxas):

    PYTHONPATH=. python benchmarks/triton_compile_check.py --arch 90 \
        --out benchmarks/results/triton_compile_sm90.json
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import torch

from lightx2v_quant.quant.kernels import gluon_gemm
from lightx2v_quant.quant.kernels import triton_tuning as tt
from lightx2v_quant.quant.kernels.triton_fused import SWEEP_STAGES, fused_candidates, w8a8_quant_gemm_kernel
from lightx2v_quant.quant.kernels.triton_gemm import w4a16_kernel, w8a8_kernel, w8a8_tma_kernel
from lightx2v_quant.quant.kernels.triton_quant import (
    MAX_TILED_K,
    _per_group_kernel,
    _per_token_kernel,
    _per_token_long_kernel,
    tile_rows,
)

GLUON_DTYPES = {"fp8e4nv": torch.float8_e4m3fn, "i8": torch.int8, "bf16": torch.bfloat16}
SMEM_LIMIT = {90: 232448, 89: 101376, 86: 101376, 80: 166912}  # opt-in bytes per block
DIV16 = [["tt.divisibility", 16]]


def _source(kind: str, cfg: tt.TileConfig, a_ty: str, out_ty: str, num_sms: int, arch: int = 90) -> ASTSource:
    """The ASTSource the JIT would build for a typical Wan shape (pointers aligned, N and K % 16 == 0)."""
    if cfg.fused:
        fn = w8a8_quant_gemm_kernel
        sig = {"x_ptr": "*bf16", "b_ptr": f"*{a_ty}", "c_ptr": f"*{out_ty}", "sb_ptr": "*fp32"}
        sig["bias_ptr"] = f"*{out_ty}"
        ints = ["M", "N", "K", "stride_xm", "stride_bn", "stride_cm"]
        cons = dict(
            QMAX=127.0 if a_ty == "i8" else 448.0,
            IS_INT8=a_ty == "i8",
            EVEN_K=True,
            HAS_BIAS=True,
            SWEEP_STAGES=SWEEP_STAGES,
        )
    elif kind == tt.W4A16:
        fn = w4a16_kernel
        sig = {
            "a_ptr": f"*{a_ty}",
            "w_ptr": "*u8",
            "s_ptr": "*fp32",
            "bias_ptr": f"*{a_ty}",
            "c_ptr": f"*{out_ty}",
        }
        ints = ["M", "N", "K", "stride_am", "stride_wn", "stride_sn", "stride_cm"]
        cons = dict(HAS_BIAS=True, PRECISION="tf32", SWAP_AB=cfg.swap_ab)
    elif cfg.tma:
        fn = w8a8_tma_kernel
        half = cfg.block_n // (2 if cfg.subtile else 1)
        sig = {
            "a_desc": f"tensordesc<{a_ty}[{cfg.block_m}, {cfg.block_k}]>",
            "b_desc": f"tensordesc<{a_ty}[{cfg.block_n}, {cfg.block_k}]>",
            "c_desc": f"tensordesc<{out_ty}[{cfg.block_m}, {half}]>",
            "sa_ptr": "*fp32",
            "sb_ptr": "*fp32",
            "bias_ptr": f"*{out_ty}",
        }
        ints = ["M", "N", "K", "stride_sak", "stride_sbn"]
        cons = dict(
            NUM_SMS=num_sms,
            SUBTILE=cfg.subtile,
            HAS_BIAS=True,
            BLOCK_SCALED=kind == tt.FP8_BLOCK,
            IS_INT8=a_ty == "i8",
            USE_PDL=arch >= 90,
        )
    else:
        fn = w8a8_kernel
        sig = {
            "a_ptr": f"*{a_ty}",
            "b_ptr": f"*{a_ty}",
            "c_ptr": f"*{out_ty}",
            "sa_ptr": "*fp32",
            "sb_ptr": "*fp32",
            "bias_ptr": f"*{out_ty}",
        }
        ints = ["M", "N", "K", "stride_am", "stride_bn", "stride_cm", "stride_sak", "stride_sbn"]
        cons = dict(
            EVEN_K=True,
            HAS_BIAS=True,
            BLOCK_SCALED=kind == tt.FP8_BLOCK,
            IS_INT8=a_ty == "i8",
            USE_PDL=arch >= 90,
        )
    cons.update(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m)
    sig.update({name: "i32" for name in ints})
    sig.update({name: "constexpr" for name in cons})
    names = list(fn.arg_names)
    aligned = [n for n in sig if sig[n].startswith("*")] + [
        n for n in ints if n not in ("M", "stride_sak", "stride_sbn")
    ]
    attrs = {(names.index(n),): DIV16 for n in aligned}
    return ASTSource(fn=fn, signature=sig, constexprs=cons, attrs=attrs)


def _quant_sources(arch: int):
    """(label, ASTSource, num_warps) for the quantizers at Wan's row lengths, every tuning candidate."""
    names = list(_per_token_kernel.arg_names)
    for k in (1280, 1536, 4096, 5120, 8960, 10240, 13824, 20000):
        for x_ty, elem in (("bf16", 2), ("fp32", 4)):
            for cfg in tt.quant_candidates(k, elem):
                for is_int8 in (False, True):
                    if (not is_int8 and arch < 89) or (x_ty == "fp32" and k not in (5120, 20000)):
                        continue
                    sig = {
                        "x_ptr": f"*{x_ty}",
                        "q_ptr": "*i8" if is_int8 else "*fp8e4nv",
                        "s_ptr": "*fp32",
                        "M": "i32",
                        "K": "i32",
                        "stride_xm": "i32",
                        "stride_qm": "i32",
                    }
                    cons = dict(QMAX=127.0 if is_int8 else 448.0, IS_INT8=is_int8, USE_PDL=arch >= 90)
                    if k <= MAX_TILED_K:
                        fn = _per_token_kernel
                        g, (r0, r1, r2, r3), masked = tile_rows(k, cfg.num_warps, elem)
                        cons.update(G=g, R0=r0, R1=r1, R2=r2, R3=r3, MASKED=masked)
                        shape = f"G={g} R={r0}+{r1}+{r2}+{r3}{' masked' if masked else ''}"
                    else:
                        fn = _per_token_long_kernel
                        cons.update(BLOCK_K=(16 // elem) * 32 * cfg.num_warps * 4)
                        shape = f"loop BLOCK_K={cons['BLOCK_K']}"
                    sig.update({n: "constexpr" for n in cons})
                    names = list(fn.arg_names)
                    attrs = {
                        (names.index(n),): DIV16
                        for n in ("x_ptr", "q_ptr", "s_ptr", "K", "stride_xm", "stride_qm")
                    }
                    label = f"per-token {x_ty}->{'int8' if is_int8 else 'fp8'} K={k} {shape}"
                    src = ASTSource(fn=fn, signature=sig, constexprs=cons, attrs=attrs)
                    yield label, src, cfg.num_warps
    if arch >= 89:
        names = list(_per_group_kernel.arg_names)
        sig = {
            "x_ptr": "*bf16",
            "q_ptr": "*fp8e4nv",
            "st_ptr": "*fp32",
            "M": "i32",
            "stride_xm": "i32",
            "stride_qm": "i32",
            "stride_st": "i32",
        }
        cons = dict(GROUP=128, ROWS=32, USE_PDL=arch >= 90)
        sig.update({n: "constexpr" for n in cons})
        attrs = {(names.index(n),): DIV16 for n in ("x_ptr", "q_ptr", "st_ptr", "stride_xm", "stride_qm")}
        yield (
            "per-group-128 fp8",
            ASTSource(fn=_per_group_kernel, signature=sig, constexprs=cons, attrs=attrs),
            4,
        )


def check_quant(arch: int) -> list[dict]:
    rows = []
    for label, src, warps in _quant_sources(arch):
        ck = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=warps))
        ptx = ck.asm["ptx"]
        row = {
            "kind": "quant",
            "config": label,
            "num_warps": warps,
            "smem": ck.metadata.shared,
            "vector_loads": ptx.count("ld.global.v4") + ptx.count("ld.global.nc.v4"),
            "vector_stores": ptx.count("st.global.v4") + ptx.count("st.global.v2"),
            "div_rn": ptx.count("div.rn.f32"),
            **_ptxas_report(ptx, arch),
        }
        rows.append(row)
        print(
            f"quant  {label:58s} w{warps:<2d} regs {row['regs']} spill {row['spill_bytes']} "
            f"v4 loads {row['vector_loads']} vector stores {row['vector_stores']} div.rn {row['div_rn']}",
            flush=True,
        )
    return rows


def _ptxas_report(ptx: str, arch: int) -> dict:
    from triton.backends.nvidia.compiler import get_ptxas

    suffix = "a" if arch >= 90 else ""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "k.ptx"
        path.write_text(ptx)
        out = subprocess.run(
            [
                get_ptxas(arch).path,
                f"-arch=sm_{arch}{suffix}",
                "-v",
                str(path),
                "-o",
                str(Path(d) / "k.cubin"),
            ],
            capture_output=True,
            text=True,
        )
    text = out.stdout + out.stderr
    regs = re.search(r"Used (\d+) registers", text)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    return {
        "regs": int(regs.group(1)) if regs else None,
        "spill_bytes": int(spills.group(1)) + int(spills.group(2)) if spills else None,
    }


def check(arch: int, kinds: list[str], num_sms: int = 132) -> list[dict]:
    target = GPUTarget("cuda", arch, 32)
    rows = []
    for kind in kinds:
        variants = [("fp8e4nv", "bf16")] if kind == tt.FP8_BLOCK else [("fp8e4nv", "bf16"), ("i8", "bf16")]
        if kind == tt.W4A16:
            variants = [("bf16", "bf16")]
        for a_ty, out_ty in variants:
            if a_ty == "fp8e4nv" and arch < 89:
                continue
            seen = set()
            for cls in ("large", "medium", "small"):
                m = {"large": 32760, "medium": 512, "small": 16}[cls]
                a_bytes = 2 if kind == tt.W4A16 else 1
                smem_limit = SMEM_LIMIT.get(arch, 101376)
                cands = tt.candidates(kind, m, arch, smem_limit, a_bytes, 2)
                if kind == tt.W8A8:  # the one-launch quantize+GEMM routes
                    cands += fused_candidates(m, arch, smem_limit)
                for cfg in cands:
                    if cfg in seen:
                        continue
                    seen.add(cfg)
                    row = {"kind": kind, "a": a_ty, "m_class": cls, "config": cfg.label()}
                    t0 = time.time()
                    try:
                        src = (
                            gluon_gemm.ast_source(cfg, GLUON_DTYPES[a_ty], GLUON_DTYPES[out_ty])
                            if cfg.gluon
                            else _source(kind, cfg, a_ty, out_ty, num_sms, arch)
                        )
                        ck = triton.compile(
                            src,
                            target=target,
                            options=dict(
                                num_warps=cfg.num_warps,
                                num_stages=cfg.num_stages,
                                launch_pdl=arch >= 90 and kind != tt.W4A16 and not (cfg.fused or cfg.gluon),
                            ),
                        )
                    except Exception as exc:  # noqa: BLE001 - a report of what does not build
                        row["error"] = (
                            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
                        )
                        rows.append(row)
                        print(
                            f"{kind:13s} {a_ty:8s} {cls:6s} {cfg.label():32s} FAILED {row['error']}",
                            flush=True,
                        )
                        continue
                    ptx = ck.asm["ptx"]
                    row.update(
                        smem=ck.metadata.shared,
                        wgmma=ptx.count("wgmma.mma_async"),
                        tma_loads=ptx.count("cp.async.bulk.tensor"),
                        compile_s=round(time.time() - t0, 2),
                        **_ptxas_report(ptx, arch),
                    )
                    row["fits"] = row["smem"] <= SMEM_LIMIT.get(arch, 101376)
                    if cfg.fused:  # the |max| sweep's tile loads went through async copies (pipelined)
                        row["sweep_pipelined"] = not re.search(
                            r"tt\.load [^:\n]*: tensor<\d+x\d+x!tt\.ptr<bf16>", ck.asm["ttgir"]
                        )
                    rows.append(row)
                    print(
                        f"{kind:13s} {a_ty:8s} {cls:6s} {cfg.label():32s} smem {row['smem'] // 1024:4d}K "
                        f"regs {row['regs']} spill {row['spill_bytes']} "
                        f"wgmma {row['wgmma']} tma {row['tma_loads']}"
                        f"{'' if row['fits'] else '  > SMEM LIMIT'}"
                        f"{'' if row.get('sweep_pipelined', True) else '  SWEEP NOT PIPELINED'}",
                        flush=True,
                    )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability as an integer (90, 89, 80)")
    parser.add_argument("--kinds", nargs="*", default=list(tt.KINDS), choices=list(tt.KINDS))
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    rows = check_quant(args.arch) + check(args.arch, args.kinds)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps({"arch": args.arch, "triton": triton.__version__, "rows": rows}, indent=1)
        )
    bad = [
        r
        for r in rows
        if "error" in r
        or not r.get("fits", True)
        or (r.get("spill_bytes") or 0) > 0
        or not r.get("sweep_pipelined", True)
    ]
    print(f"{len(rows)} configs, {len(bad)} failing / over the limit / spilling / with an unpipelined sweep")
    return 0


if __name__ == "__main__":
    sys.exit(main())
