"""Probe: the Gluon W4A16 GEMM with a separate unpacking warpgroup, against the register-operand kernel.

    PYTHONPATH=. python benchmarks/probes/w4a16_transform.py --out $OUT/w4a16_transform.json

Design under test: a producer partition loads (x tile, packed W tile) by TMA; a *transform* warpgroup
unpacks each packed W tile ([128, 64] values) into a bf16 tile in shared memory (a ring of W_STAGES);
two consumer warpgroups run plain shared-memory wgmmas (64 W rows x BLOCK_T tokens each), one group kept
in flight across K steps, as the W8A8 Gluon kernel does. Compared with ``gluon_w4a16`` (each consumer
unpacks its own rows into wgmma's register operand), the unpacking overlaps the MMAs of both consumers
instead of alternating with them, at the cost of writing and reading the bf16 tile in shared memory.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from gemm_cases import SHAPES, bench, problem, write

from lightx2v_quant.quant.kernels import gluon_gemm, gluon_w4a16 as g4
from lightx2v_quant.quant.kernels.triton_quant import cdiv

if g4.AVAILABLE:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )

    from lightx2v_quant.quant.kernels.gluon_gemm import tma_load
    from lightx2v_quant.quant.kernels.triton_gemm import _tile_coords

    @gluon.jit
    def _load(item, x_desc, w_desc, x_bufs, w_bufs, ready, empty, start, nprog, num_pid_t, num_pid_n, k_tiles, total,
              GROUP_M: gl.constexpr):  # fmt: skip
        """TMA loads of flat item ``item`` of this program (tile start + (item // k_tiles) nprog, K step
        item % k_tiles) once both consumers have released its slot; nothing past the last item."""
        STAGES: gl.constexpr = x_bufs.shape[0]
        BLOCK_T: gl.constexpr = x_desc.block_type.shape[0]
        BLOCK_K: gl.constexpr = x_desc.block_type.shape[1]
        BLOCK_N: gl.constexpr = w_desc.block_type.shape[0]
        slot = item % STAGES
        ok = item < total
        mbarrier.wait(empty.index(slot), ((item // STAGES) & 1) ^ 1, pred=ok & (item >= STAGES))
        kk = item % k_tiles
        pid_t, pid_n = _tile_coords(start + (item // k_tiles) * nprog, num_pid_t, num_pid_n, GROUP_M)
        bar = ready.index(slot)
        mbarrier.expect(bar, x_desc.block_type.nbytes + w_desc.block_type.nbytes, pred=ok)
        tma_load(x_desc, [pid_t * BLOCK_T, kk * BLOCK_K], bar, x_bufs.index(slot), ok)
        tma_load(w_desc, [pid_n * BLOCK_N, kk * (BLOCK_K // 2)], bar, w_bufs.index(slot), ok)

    @gluon.jit
    def _transform(args, x_desc, w_desc):
        """The default partition: loads the ring (one thread issues the copies) and unpacks the whole
        packed W tile of each K step into bf16 in the W ring (shared memory)."""
        (x_bufs, w_bufs, wbf, c_smem, ready, empty, wready, wempty, c_desc, s_ptr, bias_ptr, M, N, K,
         stride_sn, GROUP_M, HAS_BIAS) = args  # fmt: skip
        STAGES: gl.constexpr = x_bufs.shape[0]
        W_STAGES: gl.constexpr = wbf.shape[0]
        BLOCK_T: gl.constexpr = x_bufs.shape[1]
        BLOCK_K: gl.constexpr = x_bufs.shape[2]
        BLOCK_N: gl.constexpr = w_bufs.shape[1]
        pk_layout: gl.constexpr = gl.BlockedLayout([1, 8], [8, 4], [gl.num_warps(), 1], [1, 0])
        rows = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, pk_layout))
        start = gl.program_id(0)
        nprog = gl.num_programs(0)
        num_pid_t = gl.cdiv(M, BLOCK_T)
        num_pid_n = gl.cdiv(N, BLOCK_N)
        n_tiles = num_pid_t * num_pid_n
        k_tiles = K // BLOCK_K
        total = gl.cdiv(n_tiles - start, nprog) * k_tiles
        for i in gl.static_range(STAGES - 1):
            _load(i, x_desc, w_desc, x_bufs, w_bufs, ready, empty, start, nprog, num_pid_t, num_pid_n, k_tiles, total, GROUP_M)
        item = 0
        for tile in range(start, n_tiles, nprog):
            pid_t, pid_n = _tile_coords(tile, num_pid_t, num_pid_n, GROUP_M)
            r = pid_n * BLOCK_N + rows
            for kk in range(k_tiles):
                scale = gl.load(s_ptr + r * stride_sn + (kk * BLOCK_K) // 128, mask=r < N, other=0.0)
                slot = item % STAGES
                mbarrier.wait(ready.index(slot), (item // STAGES) & 1)
                p = w_bufs.index(slot).load(pk_layout).to(gl.int32)
                w = g4._unpack(p, scale).to(wbf.dtype)
                ws = item % W_STAGES
                mbarrier.wait(wempty.index(ws), ((item // W_STAGES) & 1) ^ 1, pred=item >= W_STAGES)
                wbf.index(ws).store(w)
                fence_async_shared()
                mbarrier.arrive(wready.index(ws))
                # Only now the next load: its slot (item - 1's) comes back once the consumers, which needed
                # this W tile to go on, have finished item - 1's wgmmas.
                _load(item + STAGES - 1, x_desc, w_desc, x_bufs, w_bufs, ready, empty, start, nprog, num_pid_t,
                      num_pid_n, k_tiles, total, GROUP_M)  # fmt: skip
                item += 1

    @gluon.jit
    def _consumer(args, WG: gl.constexpr):
        (x_bufs, w_bufs, wbf, c_smem, ready, empty, wready, wempty, c_desc, s_ptr, bias_ptr, M, N, K,
         stride_sn, GROUP_M, HAS_BIAS) = args  # fmt: skip
        STAGES: gl.constexpr = x_bufs.shape[0]
        W_STAGES: gl.constexpr = wbf.shape[0]
        BLOCK_T: gl.constexpr = x_bufs.shape[1]
        BLOCK_K: gl.constexpr = x_bufs.shape[2]
        BLOCK_N: gl.constexpr = w_bufs.shape[1]
        ROWS: gl.constexpr = c_desc.block_type.shape[1]
        mma_layout: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_T, 16]
        )
        start = gl.program_id(0)
        nprog = gl.num_programs(0)
        num_pid_t = gl.cdiv(M, BLOCK_T)
        num_pid_n = gl.cdiv(N, BLOCK_N)
        n_tiles = num_pid_t * num_pid_n
        k_tiles = K // BLOCK_K
        c_buf = c_smem.index(WG)
        item = 0
        for tile in range(start, n_tiles, nprog):
            pid_t, pid_n = _tile_coords(tile, num_pid_t, num_pid_n, GROUP_M)
            acc = gl.zeros((ROWS, BLOCK_T), dtype=gl.float32, layout=mma_layout)
            for kk in range(k_tiles):
                slot = item % STAGES
                ws = item % W_STAGES
                mbarrier.wait(ready.index(slot), (item // STAGES) & 1)
                mbarrier.wait(wready.index(ws), (item // W_STAGES) & 1)
                a = wbf.index(ws).slice(WG * ROWS, ROWS, dim=0)
                acc = warpgroup_mma(a, x_bufs.index(slot).permute((1, 0)), acc, is_async=True)
                acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
                prev = item + STAGES - 1
                wprev = item + W_STAGES - 1
                if kk > 0:
                    mbarrier.arrive(empty.index(prev % STAGES))
                    mbarrier.arrive(wempty.index(wprev % W_STAGES))
                item += 1
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            mbarrier.arrive(empty.index((item + STAGES - 1) % STAGES))
            mbarrier.arrive(wempty.index((item + W_STAGES - 1) % W_STAGES))
            g4._store_transposed(acc, c_desc, c_buf, bias_ptr, pid_t * BLOCK_T, pid_n * BLOCK_N + WG * ROWS, N, HAS_BIAS)
        tma.store_wait(pendings=0)

    @gluon.jit
    def _consumer0(args):
        _consumer(args, 0)

    @gluon.jit
    def _consumer1(args):
        _consumer(args, 1)

    @gluon.jit
    def w4a16_transform_kernel(
        x_desc, w_desc, s_ptr, bias_ptr, c_desc, M, N, K, stride_sn,
        GROUP_M: gl.constexpr, STAGES: gl.constexpr, W_STAGES: gl.constexpr, HAS_BIAS: gl.constexpr,
        C_REGS: gl.constexpr, num_warps: gl.constexpr,
    ):  # fmt: skip
        x_bufs = gl.allocate_shared_memory(x_desc.dtype, [STAGES] + x_desc.block_type.shape, x_desc.layout)
        w_bufs = gl.allocate_shared_memory(w_desc.dtype, [STAGES] + w_desc.block_type.shape, w_desc.layout)
        BLOCK_N: gl.constexpr = w_desc.block_type.shape[0]
        BLOCK_K: gl.constexpr = x_desc.block_type.shape[1]
        wbf_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_K], x_desc.dtype)
        wbf = gl.allocate_shared_memory(x_desc.dtype, [W_STAGES, BLOCK_N, BLOCK_K], wbf_layout)
        c_smem = gl.allocate_shared_memory(c_desc.dtype, [2] + c_desc.block_type.shape, c_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        wready = gl.allocate_shared_memory(gl.int64, [W_STAGES, 1], mbarrier.MBarrierLayout())
        wempty = gl.allocate_shared_memory(gl.int64, [W_STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)
            mbarrier.init(empty.index(i), count=2)  # both consumers
        for i in gl.static_range(W_STAGES):
            mbarrier.init(wready.index(i), count=1)
            mbarrier.init(wempty.index(i), count=2)
        args = (x_bufs, w_bufs, wbf, c_smem, ready, empty, wready, wempty, c_desc, s_ptr, bias_ptr, M, N, K,
                stride_sn, GROUP_M, HAS_BIAS)  # fmt: skip
        gl.warp_specialize(
            [
                (_transform, (args, x_desc, w_desc)),  # the default partition: num_warps (4) warps
                (_consumer0, (args,)),
                (_consumer1, (args,)),
            ],
            [4, 4],
            [C_REGS, C_REGS],
        )


def launch(x, w_packed, w_scale, out, block_t=256, stages=4, w_stages=3, c_regs=176):
    from lightx2v_quant.quant.kernels.triton_launch import run_kernel

    (m, k), n = x.shape, w_packed.shape[0]
    x_desc, w_desc, c_desc = g4.descriptors(x, w_packed, out, block_t, g4.BLOCK_N, 64)
    args = (x_desc, w_desc, w_scale, w_scale, c_desc, m, n, k, w_scale.stride(0))
    meta = dict(GROUP_M=8, STAGES=stages, W_STAGES=w_stages, HAS_BIAS=False, C_REGS=c_regs, num_warps=4)
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count
    tiles = cdiv(m, block_t) * cdiv(n, g4.BLOCK_N)
    return run_kernel(w4a16_transform_kernel, (min(sms, tiles),), args, meta, False)


def ast_source(block_t=256, stages=4, w_stages=3, c_regs=176):
    from triton.runtime.jit import mangle_type

    x = torch.empty(block_t, 256, dtype=torch.bfloat16)
    w = torch.empty(128, 128, dtype=torch.uint8)
    out = torch.empty(block_t, 128, dtype=torch.bfloat16)
    d = g4.descriptors(x, w, out, block_t, 128, 64)
    sig = {"x_desc": mangle_type(d[0]), "w_desc": mangle_type(d[1]), "s_ptr": "*fp32", "bias_ptr": "*bf16",
           "c_desc": mangle_type(d[2]), "M": "i32", "N": "i32", "K": "i32", "stride_sn": "i32"}
    cons = {"GROUP_M": 8, "STAGES": stages, "W_STAGES": w_stages, "HAS_BIAS": False, "C_REGS": c_regs, "num_warps": 4}
    return gluon_gemm.gluon_source(w4a16_transform_kernel, sig, cons)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shapes", nargs="*", default=["small", "qkvo", "ffn-up", "ffn-down"])
    parser.add_argument("--variants", nargs="*", default=["256x4x3", "256x4x2"], help="TOKENSxSTAGESxW_STAGES")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    from lightx2v_quant.quant.kernels import triton_ops
    from lightx2v_quant.quant.kernels.triton_tuning import TileConfig

    rows = []
    for name in args.shapes:
        m, n, k = SHAPES[name]
        x, t, w_bf16 = problem("w4a16-int4-g128", m, n, k)
        ref = F.linear(x, w_bf16)
        row = {"shape": name, "bf16_ms": bench(lambda: F.linear(x, w_bf16))}
        cfg = TileConfig(256, 128, 64, 4, 5, tma=True, gluon=True)
        y = triton_ops.w4a16_matmul(x, t["weight"], t["weight_scale"], config=cfg)
        row["register-operand 256x5"] = {
            "ms": bench(lambda: triton_ops.w4a16_matmul(x, t["weight"], t["weight_scale"], config=cfg)),
            "equals_bf16_linear": bool(torch.equal(y, ref)),
        }
        for v in args.variants:
            bt, st, wst = (int(i) for i in v.split("x"))
            out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
            print(name, v, file=sys.stderr, flush=True)
            try:
                launch(x, t["weight"], t["weight_scale"], out, bt, st, wst)
                torch.cuda.synchronize()
                ms = bench(lambda: launch(x, t["weight"], t["weight_scale"], out, bt, st, wst))
                row[f"transform {v}"] = {"ms": ms, "equals_bf16_linear": bool(torch.equal(out, ref))}
            except Exception as exc:  # noqa: BLE001 - a probe
                row[f"transform {v}"] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
        for key, val in list(row.items()):
            if isinstance(val, dict):
                val["x_bf16"] = row["bf16_ms"] / val["ms"]
        print(json.dumps(row), flush=True)
        rows.append(row)
    write(args.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
