"""Probe: the warp-specialized W8A8 Gluon GEMM against the one-partition kernel, same tile (H100).

    PYTHONPATH=. python benchmarks/probes/w8a8_ws.py --out $OUT/w8a8_ws.json

``gluon_gemm.w8a8_gluon_kernel`` runs both warpgroups of a 128 x 256 tile in one partition: before each
TMA refill of a ring slot Gluon makes all eight warps meet (``bar.sync 0``, four per K step in the
SASS), since the slot was read by both warpgroups' wgmmas. ``w8a8_gluon_ws_kernel`` here has a producer
partition (``gluon_gemm.ring_producer``, as ``gluon_w4a16``) refill a slot once both consumer warpgroups
released it through an mbarrier, so they never wait for each other (no ``bar.sync 0`` in its SASS).
Same wgmmas, K order and epilogue arithmetic: the outputs must be bit-identical. GEMM alone (quantized
inputs prepared once), at the 14B DIT's shapes and its token chunks, two interleaved rounds.

H100, two runs (``results/logs/w8a8_ws_nvidia-h100.json``): bit-identical everywhere; the differences
(-9% to +8% per shape and format in the first run, none consistent in the second, whose rounds of the
same kernel differed by up to 10%) are within the machine's noise, so the kernel stays a probe.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from gemm_cases import SHAPES, bench, write

from lightx2v_quant.quant.kernels import gluon_gemm as gg
from lightx2v_quant.quant.kernels.triton_quant import cdiv

if gg.AVAILABLE:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )

    from lightx2v_quant.quant.kernels.gluon_gemm import _tma_store, ring_producer
    from lightx2v_quant.quant.kernels.triton_gemm import _tile_coords

    WS_CONSUMER_REGS = gl.constexpr(240)  # per consumer thread (setmaxnreg): 64 x 256 accumulator = 128

    @gluon.jit
    def _ws_consumer(args, WG: gl.constexpr, INSTR_N: gl.constexpr, HAS_BIAS: gl.constexpr, IS_INT8: gl.constexpr):
        """Warpgroup WG: rows [BLOCK_M / 2 * WG, ...) of each tile; the K loop keeps one wgmma group in
        flight and gives each slot back once the group reading it is done; the epilogue as in
        ``_w8a8_gluon`` (same arithmetic, same bits), stored from this warpgroup's own staging buffer."""
        (a_bufs, b_bufs, c_smem, ready, empty, c_desc, sa_ptr, sb_ptr, bias_ptr, M, N, K, GROUP_M) = args
        STAGES: gl.constexpr = a_bufs.shape[0]
        BLOCK_M: gl.constexpr = a_bufs.shape[1]
        BLOCK_K: gl.constexpr = a_bufs.shape[2]
        BLOCK_N: gl.constexpr = b_bufs.shape[1]
        ROWS: gl.constexpr = c_desc.block_type.shape[0]
        HALF_N: gl.constexpr = c_desc.block_type.shape[1]
        mma_layout: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, INSTR_N, 32]
        )
        acc_dtype: gl.constexpr = gl.int32 if IS_INT8 else gl.float32
        vec_layout: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
        start = gl.program_id(0)
        nprog = gl.num_programs(0)
        num_pid_m = gl.cdiv(M, BLOCK_M)
        num_pid_n = gl.cdiv(N, BLOCK_N)
        k_tiles = gl.cdiv(K, BLOCK_K)
        c_buf = c_smem.index(WG)
        item = 0
        for tile in range(start, num_pid_m * num_pid_n, nprog):
            pid_m, pid_n = _tile_coords(tile, num_pid_m, num_pid_n, GROUP_M)
            off_m = pid_m * BLOCK_M + WG * ROWS
            off_n = pid_n * BLOCK_N
            acc = gl.zeros((ROWS, BLOCK_N), dtype=acc_dtype, layout=mma_layout)
            rows = off_m + gl.arange(0, ROWS, layout=vec_layout)
            sa_v = gl.load(sa_ptr + rows, mask=rows < M, other=0.0)
            cols0 = off_n + gl.arange(0, HALF_N, layout=vec_layout)
            cols1 = cols0 + HALF_N
            sbs = (gl.load(sb_ptr + cols0, mask=cols0 < N, other=0.0), gl.load(sb_ptr + cols1, mask=cols1 < N, other=0.0))
            if HAS_BIAS:
                biases = (
                    gl.load(bias_ptr + cols0, mask=cols0 < N, other=0.0).to(gl.float32),
                    gl.load(bias_ptr + cols1, mask=cols1 < N, other=0.0).to(gl.float32),
                )
            else:
                biases = sbs
            for kk in range(k_tiles):
                slot = item % STAGES
                mbarrier.wait(ready.index(slot), (item // STAGES) & 1)
                a = a_bufs.index(slot).slice(WG * ROWS, ROWS, dim=0)
                acc = warpgroup_mma(a, b_bufs.index(slot).permute((1, 0)), acc, is_async=True)
                acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
                if kk > 0:  # the previous K step's wgmmas are done: its slot goes back
                    mbarrier.arrive(empty.index((item + STAGES - 1) % STAGES))
                item += 1
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            mbarrier.arrive(empty.index((item + STAGES - 1) % STAGES))
            halves = gl.split(gl.permute(gl.reshape(acc, [ROWS, 2, HALF_N]), [0, 2, 1]))
            for h in gl.static_range(2):
                part = halves[h]
                sa = gl.convert_layout(sa_v, gl.SliceLayout(1, part.type.layout))
                sb = gl.convert_layout(sbs[h], gl.SliceLayout(0, part.type.layout))
                out = part.to(gl.float32) * gl.expand_dims(sa, 1) * gl.expand_dims(sb, 0)
                if HAS_BIAS:
                    out = out + gl.expand_dims(gl.convert_layout(biases[h], gl.SliceLayout(0, part.type.layout)), 0)
                tma.store_wait(pendings=0)  # the previous store has left the staging buffer
                c_buf.store(out.to(c_desc.dtype))
                fence_async_shared()
                _tma_store(c_desc, [off_m, off_n + h * HALF_N], c_buf)
        tma.store_wait(pendings=0)

    @gluon.jit
    def _ws_consumer0(args, INSTR_N: gl.constexpr, HAS_BIAS: gl.constexpr, IS_INT8: gl.constexpr):
        _ws_consumer(args, 0, INSTR_N, HAS_BIAS, IS_INT8)

    @gluon.jit
    def _ws_consumer1(args, INSTR_N: gl.constexpr, HAS_BIAS: gl.constexpr, IS_INT8: gl.constexpr):
        _ws_consumer(args, 1, INSTR_N, HAS_BIAS, IS_INT8)

    @gluon.jit
    def w8a8_gluon_ws_kernel(
        a_desc,
        b_desc,
        c_desc,
        sa_ptr,
        sb_ptr,
        bias_ptr,
        M,
        N,
        K,
        GROUP_M: gl.constexpr,
        STAGES: gl.constexpr,
        INSTR_N: gl.constexpr,
        HAS_BIAS: gl.constexpr,
        IS_INT8: gl.constexpr,
        num_warps: gl.constexpr,
    ):
        """``w8a8_gluon_kernel``'s product and bits, warp-specialized: a 4-warp producer partition and two
        consumer warpgroups (each half the tile's rows) meet only through the ring's mbarriers. (In one
        partition Gluon makes all eight warps meet before each refill, four ``bar.sync`` per K step.)
        ``c_desc``: [BLOCK_M / 2, BLOCK_N / 2] blocks."""
        a_bufs = gl.allocate_shared_memory(a_desc.dtype, [STAGES] + a_desc.block_type.shape, a_desc.layout)
        b_bufs = gl.allocate_shared_memory(b_desc.dtype, [STAGES] + b_desc.block_type.shape, b_desc.layout)
        c_smem = gl.allocate_shared_memory(c_desc.dtype, [2] + c_desc.block_type.shape, c_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)
            mbarrier.init(empty.index(i), count=2)  # one arrival per consumer warpgroup
        args = (a_bufs, b_bufs, c_smem, ready, empty, c_desc, sa_ptr, sb_ptr, bias_ptr, M, N, K, GROUP_M)
        gl.warp_specialize(
            [
                (ring_producer, (a_desc, b_desc, a_bufs, b_bufs, ready, empty, M, N, K, GROUP_M)),
                (_ws_consumer0, (args, INSTR_N, HAS_BIAS, IS_INT8)),
                (_ws_consumer1, (args, INSTR_N, HAS_BIAS, IS_INT8)),
            ],
            [4, 4],
            [WS_CONSUMER_REGS, WS_CONSUMER_REGS],
        )


def launch(a, w, sa, sb, bias, out, stages=4):
    """The warp-specialized kernel with a 128 x 256 x 128 tile (per-channel scales sa [M], sb [N])."""
    from lightx2v_quant.quant.kernels.triton_launch import run_kernel
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    (m, k), n = a.shape, w.shape[0]
    blocks = ((a, [128, 128]), (w, [256, 128]), (out, [64, 128]))
    descs = [TensorDescriptor.from_tensor(t, b, gg.shared_layout(tuple(b), t.dtype)) for t, b in blocks]
    is_int8 = a.dtype == torch.int8
    meta = dict(GROUP_M=8, STAGES=stages, INSTR_N=gg.instr_n(256, is_int8), HAS_BIAS=bias is not None,
                IS_INT8=is_int8, num_warps=4)
    sms = torch.cuda.get_device_properties(a.device).multi_processor_count
    grid = (min(sms, cdiv(m, 128) * cdiv(n, 256)),)
    args = (*descs, sa, sb, sb if bias is None else bias, m, n, k)
    return run_kernel(w8a8_gluon_ws_kernel, grid, args, meta, False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shapes", nargs="*", default=["small", "qkvo", "ffn-up", "ffn-down"])
    parser.add_argument("--formats", nargs="*", default=["int8", "fp8"])
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    from lightx2v_quant.quant import formats as qf
    from lightx2v_quant.quant.kernels import triton_ops
    from lightx2v_quant.quant.kernels.triton_tuning import TileConfig

    rows = []
    for name in args.shapes:
        m, n, k = SHAPES[name]
        torch.manual_seed(0)
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
        wf = torch.randn(n, k) * 0.02
        row = {"shape": name}
        w16 = wf.to(torch.bfloat16).cuda()
        row["bf16_ms"] = bench(lambda: F.linear(x, w16, bias))
        for f in args.formats:
            fmt = qf.get_format({"int8": "w8a8-int8-channel", "fp8": "w8a8-fp8-channel"}[f])
            t = {key: v.cuda() for key, v in fmt.checkpoint_tensors(wf).items()}
            q, s = triton_ops.quantize_per_token(x, fmt.name)
            one = TileConfig(128, 256, 128, 8, 4, tma=True, gluon=True)
            sa, sb = s.reshape(-1).contiguous(), t["weight_scale"].reshape(-1).float().contiguous()
            out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
            runs = {
                "one partition": lambda: triton_ops.w8a8_matmul(
                    q, s, t["weight"], t["weight_scale"], bias, torch.bfloat16, config=one
                ),
                "ws": lambda: launch(q, t["weight"], sa, sb, bias, out),
            }
            print(name, f, file=sys.stderr, flush=True)
            ref = runs["one partition"]()
            runs["ws"]()
            row[f"{f} ws same_bits"] = bool(torch.equal(out, ref))
            for _ in range(2):  # interleaved rounds
                for label, fn in runs.items():
                    row.setdefault(f"{f} {label}", []).append(bench(fn))
        print(json.dumps(row), flush=True)
        rows.append(row)
    write(args.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
