"""The int8 Q.K^T / fp8 P.V attention kernel for Hopper in Gluon: warp-specialized, with the consumer
warpgroups taking turns on the tensor cores (FlashAttention-3's "ping-pong" schedule).

Same numerics as ``lowp_triton`` on the same quantized inputs (``lowp_quant``): int8 Q.K^T with the
softmax scale and log2(e) folded into Q's per-token scales, K's per-128-key scales, the magic-number
int32 -> fp32 conversion, P computed as 448 * 2^-slack * exp2(.) and cast to fp8 e4m3 (the row max may go
stale by up to ``lowp_quant.MAX_SLACK``), fp8 P.V into an fp32 accumulator, V's channel scale and mean
applied at the end. It reads V^T with its keys in ``lowp_quant.key_order`` (``quantize_v(key_order=True)``):
each thread's fp8 P values of a row are then one contiguous run, stored with four 16-byte stores per
block instead of 32 two-byte ones (plus 16 byte-packing PRMTs that converting four at a time avoids).
With 128-key blocks its output matches ``lowp_triton``'s on the same inputs (which sums P.V's keys in the
same order) up to the order in which the fp32 row sums of P are added: this kernel keeps four parts per
row (``_quad_sums``), so the two differ by at most one bf16 step (GPU tests).

Why: per key block a warpgroup needs the tensor cores (Q.K^T and P.V, ~512 cycles for 64 query rows)
and the MUFU pipe (one exp2 per logit, ~512 cycles too). Nsight Compute on an H100 shows
``lowp_triton``'s independent programs using each about half the time (tensor pipe 46%, MUFU 47%,
issue slots 53%): they barely overlap. Here one program holds ``NUM_WG`` consumer warpgroups (64
query rows each) fed by a producer warp (TMA loads of K and V^T into a ring of ``STAGES`` slots,
released by the consumers through mbarriers), and named barriers make the consumers issue their
wgmmas in turn, so that one warpgroup's softmax runs while the tensor cores work for another.
P reaches the P.V wgmma through a per-warpgroup shared-memory tile, not registers: that frees the
registers that made ptxas serialize every wgmma with three warpgroups (160 registers each) and drops the
shuffles from the accumulator layout into the wgmma operand layout.
Measured at Wan-14B's 480p self-attention (32,760 tokens x 40 heads), same run: on an H200 24.0 ms
with three warpgroups (26.5 ms with P in registers), 26.1 ms with two, 28.7 ms for ``lowp_triton``
(``benchmarks/probes/attn_gluon_probe.py``); on an H100 24.05 ms against 28.9 ms (SDPA 37.9). Tensor
and MUFU pipes run ~51% / 53% busy (Nsight Compute): per 64x128 block a warpgroup needs ~512 cycles of
each and ~520 issue slots, and they still overlap only partly.

The grid is persistent (one program per SM, ``_attn_pingpong_kernel``): Q has two buffers, and the K / V^T
ring, like the warpgroups' turns, runs on from one tile into the next, so a tile's start-up (Q and the
first key blocks in flight, the first turns) overlaps the previous tile's end. That halved the fixed cost
per tile (``benchmarks/probes/attn_cta_cost.py``) and takes 5% off short runs, but none off a sustained
one: at the H100's 700 W cap the energy per key block sets the pace (docs/speed.md).

Per key block j, for each consumer warpgroup:

1. softmax of S(j) (CUDA cores), rescale O (P.V(j-1) finished in step 3 of the previous block) unless
   no row of the warp moved its max (a warp-uniform branch: with the stale-max slack, most blocks after
   the first few); store P(j) to the warpgroup's shared-memory tile;
2. wait for its turn; issue P.V(j) and S(j+1) = Q.K(j+1)^T (async); hand the turn to the next group;
3. wait for both wgmmas; release block j's ring slot to the producer.

``PINGPONG=False`` drops the turns (all groups issue when ready), for comparison.
"""

from __future__ import annotations

import math
import os

import torch

from lightx2v_quant.attention.lowp_quant import MAX_SLACK

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    # (without Gluon, gluon_gemm defines neither helper: the import fails here too)
    from lightx2v_quant.quant.kernels.gluon_gemm import AVAILABLE, shared_layout, tma_load
except ImportError:  # pragma: no cover - depends on the installed Triton
    AVAILABLE = False

WG_ROWS = 64  # query rows per consumer warpgroup
BLOCK_N = 128  # keys per block (= lowp_quant.QBLOCK: one K scale per block)
NUM_WARPS = 4  # the default partition: warpgroup 0 (the other warpgroups and the producer warp are workers)
STAGES = 4  # ring slots of K and V^T (a power of two: the slot and phase are a mask and a shift)
PRODUCER_REGS = 24
# Consumer warpgroups per program; LIGHTX2V_QUANT_ATTN_WARPGROUPS=2|3 at import picks (comparisons).
NUM_WG = int(os.environ.get("LIGHTX2V_QUANT_ATTN_WARPGROUPS", "3"))


def rescale_asm(n: int) -> tuple[str, str]:
    """PTX and constraints for ``O *= alpha`` over one thread's ``n`` accumulator registers, skipped by the
    whole warp when every alpha of its rows is exactly 1 (``vote.any`` + a uniform branch). Operands: $0..
    $n-1 the results, tied to the inputs $n..$2n-1 (O), then one alpha per element ($2n..$3n-1). A thread's
    first four elements cover both of its rows (the wgmma accumulator's pairs of columns in rows r, r+8),
    so their alphas decide."""
    a = [f"${2 * n + i}" for i in range(n)]
    lines = [
        "{",
        ".reg .pred %p<5>;",
        *(f"setp.neu.f32 %p{i}, {a[i]}, 0f3F800000;" for i in range(4)),
        "or.pred %p0, %p0, %p1;",
        "or.pred %p2, %p2, %p3;",
        "or.pred %p0, %p0, %p2;",
        "vote.sync.any.pred %p4, %p0, -1;",
        "@!%p4 bra.uni SKIP_${:uid};",
        *(f"mul.f32 ${i}, ${i}, {a[i]};" for i in range(n)),
        "SKIP_${:uid}:",
        "}",
    ]
    constraints = ",".join(["=f"] * n + [str(i) for i in range(n)] + ["f"] * n)
    return "\n".join(lines), constraints


def consumer_regs(num_wg: int) -> int:
    """Registers per thread of a consumer warpgroup (setmaxnreg): the SM's 64K split over the warpgroups,
    the producer's at PRODUCER_REGS, rounded down to a multiple of 8."""
    return min(240, (512 - PRODUCER_REGS) // num_wg // 8 * 8)

if AVAILABLE:
    PRODUCER_REGS_C = gl.constexpr(PRODUCER_REGS)
    P_LAYOUT = gl.constexpr(shared_layout((WG_ROWS, BLOCK_N), torch.float8_e4m3fn))
    MAGIC_I = gl.constexpr(0x4B400000)  # bits of 1.5 * 2^23: float(bits + i) = 12582912 + i, |i| < 2^22
    MAGIC_F = gl.constexpr(12582912.0)
    LOG2_PSCALE = gl.constexpr(math.log2(448.0))
    SLACK = gl.constexpr(MAX_SLACK)
    # O's rescale for head_dim 128 and 64 (64 x D accumulator: 64 or 32 registers per thread)
    RESCALE_64, RESCALE_64_C = (gl.constexpr(x) for x in rescale_asm(64))
    RESCALE_32, RESCALE_32_C = (gl.constexpr(x) for x in rescale_asm(32))
    MASKED_LOGIT = gl.constexpr(-4194304)
    # P's tile seen as 32-bit words (four fp8 keys each): same bytes, same 128-byte swizzle
    P_LAYOUT32 = gl.constexpr(gl.NVMMASharedLayout(128, 32, 2))
    # four fp32 -> four fp8 e4m3 in one register, $1 in the lowest byte (cvt puts its first source high)
    CVT4 = gl.constexpr(
        "{ .reg .b16 lo, hi; cvt.rn.satfinite.e4m3x2.f32 lo, $2, $1; cvt.rn.satfinite.e4m3x2.f32 hi, $4, $3; "
        "mov.b32 $0, {lo, hi}; }"
    )
    # Named barriers 8, 9, 10 (Gluon numbers its own from 0 up): warpgroup g waits for its turn on 8 + g
    # and hands it to the next one (g + 1 mod NUM_WG) on that one's barrier; 256 threads each (the
    # waiting warpgroup and the one handing over).
    _SYNC_8 = gl.constexpr("bar.sync 8, 256; mov.u32 $0, 0;")
    _SYNC_9 = gl.constexpr("bar.sync 9, 256; mov.u32 $0, 0;")
    _SYNC_10 = gl.constexpr("bar.sync 10, 256; mov.u32 $0, 0;")
    _ARRIVE_8 = gl.constexpr("bar.arrive 8, 256; mov.u32 $0, 0;")
    _ARRIVE_9 = gl.constexpr("bar.arrive 9, 256; mov.u32 $0, 0;")
    _ARRIVE_10 = gl.constexpr("bar.arrive 10, 256; mov.u32 $0, 0;")

    # The same shared-memory bytes seen with another dtype, shape and layout (the method lost its
    # underscore after Triton 3.6).
    if hasattr(gl.shared_memory_descriptor, "reinterpret"):

        @gluon.jit
        def _reinterpret(buf, dtype: gl.constexpr, shape: gl.constexpr, layout: gl.constexpr):
            return buf.reinterpret(dtype, shape, layout)

    else:

        @gluon.jit
        def _reinterpret(buf, dtype: gl.constexpr, shape: gl.constexpr, layout: gl.constexpr):
            return buf._reinterpret(dtype, shape, layout)

    @gluon.jit
    def _barrier(asm: gl.constexpr, num_warps: gl.constexpr):
        """One named-barrier instruction in every thread of the calling warpgroup."""
        tid = gl.arange(0, 32 * num_warps, layout=gl.BlockedLayout([1], [32], [num_warps], [0]))
        gl.inline_asm_elementwise(asm, "=r,r", [tid], dtype=gl.int32, is_pure=False, pack=1)

    @gluon.jit
    def _wait_turn(WG: gl.constexpr, num_warps: gl.constexpr):
        if WG == 0:
            _barrier(_SYNC_8, num_warps)
        elif WG == 1:
            _barrier(_SYNC_9, num_warps)
        else:
            _barrier(_SYNC_10, num_warps)

    @gluon.jit
    def _hand_over(TO: gl.constexpr, num_warps: gl.constexpr):
        """Give the turn to warpgroup TO."""
        if TO == 0:
            _barrier(_ARRIVE_8, num_warps)
        elif TO == 1:
            _barrier(_ARRIVE_9, num_warps)
        else:
            _barrier(_ARRIVE_10, num_warps)

    @gluon.jit
    def _producer(q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, q_ready, q_empty, ready, empty, n_m, n_tiles, LQP,
                  LKP, n_blocks):
        """One warp, over the program's tiles: the tile's Q (64 rows per warpgroup) into one of two Q
        buffers as soon as the consumers released the tile before last from it, then K and V^T of every key
        block into the ring (one sequence across tiles), each slot as soon as every warpgroup released it."""
        STAGES: gl.constexpr = k_bufs.shape[0]
        BN: gl.constexpr = k_desc.block_type.shape[0]
        NUM_WG: gl.constexpr = q_smem.shape[0] // 2
        PART: gl.constexpr = q_desc.block_type.shape[0]
        D: gl.constexpr = q_desc.block_type.shape[1]
        it = 0  # key blocks loaded so far (all tiles): ring slot and phase
        i = 0  # tiles so far: Q buffer and phase
        for t in range(gl.program_id(0), n_tiles, gl.num_programs(0)):
            pid_m = t % n_m
            bh = t // n_m
            qb = i % 2
            mbarrier.wait(q_empty.index(qb), ((i // 2) & 1) ^ 1, pred=i >= 2)
            mbarrier.expect(q_ready.index(qb), NUM_WG * q_desc.block_type.nbytes)
            for g in gl.static_range(NUM_WG):
                tma_load(
                    q_desc, [bh * LQP + (pid_m * NUM_WG + g) * PART, 0], q_ready.index(qb), q_smem.index(qb * NUM_WG + g)
                )
            for j in range(n_blocks):
                slot = it % STAGES
                mbarrier.wait(empty.index(slot), ((it // STAGES) & 1) ^ 1, pred=it >= STAGES)
                bar = ready.index(slot)
                mbarrier.expect(bar, k_desc.block_type.nbytes + v_desc.block_type.nbytes)
                tma_load(k_desc, [bh * LKP + j * BN, 0], bar, k_bufs.index(slot))
                tma_load(v_desc, [bh * D, j * BN], bar, v_bufs.index(slot))
                it += 1
            i += 1

    @gluon.jit
    def _softmax_step(s, sc, m_i, l_i, o, start, L_K, MASKED: gl.constexpr, row_o: gl.constexpr):
        """Online softmax of the int32 logits ``s`` in log2 units (scales folded as in
        lowp_triton._softmax_pv); returns 448 * P as int32 words of four fp8 keys ([BM, BN / 4], keys in
        ``lowp_quant.key_order``), the new row max and sum, and O rescaled."""
        BN: gl.constexpr = s.shape[1]
        if MASKED:  # the ragged last block
            valid = gl.expand_dims(start + gl.arange(0, BN, layout=gl.SliceLayout(0, s.type.layout)), 0) < L_K
            s = gl.where(valid, s, MASKED_LOGIT)
        m_new = gl.maximum(m_i, gl.max(s, 1).to(gl.float32) * sc)
        m_new = gl.where(m_new - m_i > SLACK, m_new, m_i)  # stale unless it grew by more than SLACK
        c = MAGIC_F * sc + m_new - (LOG2_PSCALE - SLACK)
        t = (s + MAGIC_I).to(gl.float32, bitcast=True) * gl.expand_dims(sc, 1) - gl.expand_dims(c, 1)
        if MASKED:
            t = gl.where(valid, t, float("-inf"))
        p = gl.exp2(t)  # 448 * 2^-SLACK * P (<= 448)
        alpha = gl.exp2(m_i - m_new)
        part = _quad_sums(p)
        l_i = l_i * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, part.type.layout)), 1) + part
        # key_order: a thread's columns 8g + 2t + e become 2 (BN / 8) t + 2g + e, contiguous per row (the
        # reshapes only rename registers); then bytes 4c .. 4c + 3 of a row are packed into word c
        BM: gl.constexpr = p.shape[0]
        p = gl.reshape(gl.permute(gl.reshape(p, [BM, BN // 8, 4, 2]), (0, 2, 1, 3)), [BM, BN // 4, 2, 2])
        even, odd = gl.split(p)  # bytes 4c + 2a and 4c + 2a + 1
        b0, b2 = gl.split(even)
        b1, b3 = gl.split(odd)
        p8 = gl.inline_asm_elementwise(CVT4, "=r,f,f,f,f", [b0, b1, b2, b3], dtype=gl.int32, is_pure=True, pack=1)
        return p8, m_new, l_i, _rescale(o, gl.expand_dims(gl.convert_layout(alpha, row_o), 1))

    @gluon.jit
    def _quad_sums(p):
        """Row sums of ``p`` ([BM, BN], wgmma accumulator layout) left in four parts, [BM, 4]: thread t of a
        quad holds the columns 8g + 2t + e of its rows and sums them over g and e alone, so the running row
        sums need no shuffles per block (4 shuffles and 4 adds fewer per block and thread); the quad's four
        parts are added once, after the last block. With the 4-slot ring: 22.4-22.6 instead of 23.0-23.3 ms
        per call on an H100, sustained (docs/speed.md)."""
        BM: gl.constexpr = p.shape[0]
        BN: gl.constexpr = p.shape[1]
        return gl.sum(gl.sum(gl.reshape(p, [BM, BN // 8, 4, 2]), 3), 1)

    @gluon.jit
    def _rescale(o, alpha):
        """o * alpha ([BM, 1]), skipped by each warp whose rows all have alpha == 1 (``rescale_asm``)."""
        N: gl.constexpr = o.shape[0] * o.shape[1] // (32 * 4)  # accumulator registers per thread
        gl.static_assert(N == 64 or N == 32, "a 64 x 128 or 64 x 64 accumulator per warpgroup")
        if N == 64:
            asm: gl.constexpr = RESCALE_64
            constraints: gl.constexpr = RESCALE_64_C
        else:
            asm: gl.constexpr = RESCALE_32
            constraints: gl.constexpr = RESCALE_32_C
        return gl.inline_asm_elementwise(asm, constraints, [o, alpha], dtype=gl.float32, is_pure=True, pack=N)

    @gluon.jit
    def _block_step(
        j, it, o, s, m_i, l_i, ks, q_sc, q_tile, p_buf, k_bufs, v_bufs, ready, empty, ks_base, s_zero, n_blocks, L_K,
        MASKED: gl.constexpr, WG: gl.constexpr, NEXT: gl.constexpr, PINGPONG: gl.constexpr, row_o: gl.constexpr,
    ):
        """Key block j of the tile for one consumer warpgroup (module docstring, steps 1-3); ``it``: the
        ring's blocks before the tile's first (its slots and phases run on across tiles)."""
        STAGES: gl.constexpr = k_bufs.shape[0]
        LOG2_STAGES: gl.constexpr = STAGES.bit_length() - 1  # (a power of two: slots and phases by bits)
        BN: gl.constexpr = k_bufs.shape[1]
        W: gl.constexpr = 4
        # 1. softmax of S(j) on the CUDA cores, O rescaled (P.V(j-1) finished last block)
        p8, m_i, l_i, o = _softmax_step(s, q_sc * ks, m_i, l_i, o, j * BN, L_K, MASKED, row_o)
        # P goes to this warpgroup's shared-memory tile, the A operand of P.V. Each warp writes and its
        # wgmma reads only the warp's own 16 rows; the fence makes the generic-proxy stores visible to
        # the wgmma's async proxy. (As a register operand P needed shuffles into the wgmma A layout, and
        # with three warpgroups at 160 registers ptxas serialized every wgmma: 26.5 vs 24.0 ms.)
        _reinterpret(p_buf, gl.int32, [p8.shape[0], p8.shape[1]], P_LAYOUT32).store(p8)
        fence_async_shared()
        # 2. this warpgroup's turn on the tensor cores: P.V(j) and S(j+1) (the last block repeats its own
        #    S: same slot); block j+1's K and V arrived (waited for at the end of the previous block)
        jn = gl.minimum(j + 1, n_blocks - 1)
        if PINGPONG:
            _wait_turn(WG, W)
        o = warpgroup_mma(p_buf, v_bufs.index((it + j) & (STAGES - 1)).permute((1, 0)), o, is_async=True)
        s = warpgroup_mma(
            q_tile, k_bufs.index((it + jn) & (STAGES - 1)).permute((1, 0)), s_zero, use_acc=False, is_async=True
        )
        if PINGPONG:
            _hand_over(NEXT, W)
        # K scale of block j+1, loaded while the wgmmas run: the fence above (MEMBAR.ALL.CTA in SASS)
        # would otherwise wait for this load's global-memory latency before the turn
        ks = gl.load(ks_base + jn)
        # 3. both done: release block j's slot (S(j) finished a block earlier), then wait for block j+2 of
        #    the tile (right after the release, whose barrier covers the wait). Not past the tile's last
        #    block: a slot released here may already hold a later block, whose phase the wait would misread.
        o, s = warpgroup_mma_wait(num_outstanding=0, deps=(o, s))
        mbarrier.arrive(empty.index((it + j) & (STAGES - 1)))
        gw = it + j + 2
        mbarrier.wait(ready.index(gw & (STAGES - 1)), (gw >> LOG2_STAGES) & 1, pred=j + 2 < n_blocks)
        return o, s, m_i, l_i, ks

    @gluon.jit
    def _consumer(args, WG: gl.constexpr, PINGPONG: gl.constexpr):
        """Warpgroup WG (its own 64 query rows of each tile), taking turns with the others on the tensor
        cores; the turns run on across the program's tiles."""
        (q_smem, p_smem, k_bufs, v_bufs, q_ready, q_empty, ready, empty, qs_ptr, ks_ptr, vs_ptr, vm_ptr, o_ptr,
         H, n_m, n_tiles, L_Q, L_K, LQP, LKP, stride_ob, stride_ol, stride_oh, n_blocks) = args
        STAGES: gl.constexpr = k_bufs.shape[0]
        NUM_WG: gl.constexpr = q_smem.shape[0] // 2
        NEXT: gl.constexpr = (WG + 1) % NUM_WG
        BM: gl.constexpr = q_smem.shape[1]
        D: gl.constexpr = q_smem.shape[2]
        BN: gl.constexpr = k_bufs.shape[1]
        W: gl.constexpr = 4
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[W, 1], instr_shape=[16, BN, 32])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[W, 1], instr_shape=[16, D, 32])
        row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
        row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
        col_o: gl.constexpr = gl.SliceLayout(0, o_layout)
        p_buf = p_smem.index(WG)
        s_zero = gl.zeros((BM, BN), dtype=gl.int32, layout=s_layout)
        offs_d = gl.arange(0, D, layout=col_o)
        n_full = L_K // BN
        if PINGPONG:
            if WG == NUM_WG - 1:
                _hand_over(0, W)  # warpgroup 0 takes the first turn

        it = 0  # key blocks of the program's earlier tiles: ring slot and phase
        i = 0  # tiles so far: Q buffer and phase
        for t in range(gl.program_id(0), n_tiles, gl.num_programs(0)):
            pid_m = t % n_m
            bh = t // n_m
            qb = i % 2
            q_tile = q_smem.index(qb * NUM_WG + WG)
            row0 = pid_m * NUM_WG * BM + WG * BM
            q_rows = row0 + gl.arange(0, BM, layout=row_s)
            q_sc = gl.load(qs_ptr + bh * LQP + q_rows, mask=q_rows < LQP, other=0.0)  # (tiles may pass LQP)
            ks_base = ks_ptr + bh * (LKP // BN)
            ks = gl.load(ks_base)  # K scale of block 0

            mbarrier.wait(q_ready.index(qb), (i // 2) & 1)
            mbarrier.wait(ready.index(it % STAGES), (it // STAGES) & 1)
            if PINGPONG:
                _wait_turn(WG, W)
            s = warpgroup_mma(q_tile, k_bufs.index(it % STAGES).permute((1, 0)), s_zero, use_acc=False, is_async=True)
            if PINGPONG:
                _hand_over(NEXT, W)
            s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
            j1 = it + gl.minimum(1, n_blocks - 1)  # (block 0 itself is not released before its step)
            mbarrier.wait(ready.index(j1 % STAGES), (j1 // STAGES) & 1)

            m_i = gl.full([BM], float("-inf"), gl.float32, layout=row_s)
            l_i = _quad_sums(gl.zeros([BM, BN], gl.float32, layout=s_layout))  # [BM, 4] parts (_quad_sums)
            o = gl.zeros((BM, D), dtype=gl.float32, layout=o_layout)
            for j in range(n_full):
                o, s, m_i, l_i, ks = _block_step(
                    j, it, o, s, m_i, l_i, ks, q_sc, q_tile, p_buf, k_bufs, v_bufs, ready, empty, ks_base, s_zero,
                    n_blocks, L_K, False, WG, NEXT, PINGPONG, row_o,
                )
            if n_full < n_blocks:  # the ragged last block: the only one with masks (kept out of the loop body)
                o, s, m_i, l_i, ks = _block_step(
                    n_full, it, o, s, m_i, l_i, ks, q_sc, q_tile, p_buf, k_bufs, v_bufs, ready, empty, ks_base,
                    s_zero, n_blocks, L_K, True, WG, NEXT, PINGPONG, row_o,
                )
            mbarrier.arrive(q_empty.index(qb))  # every wgmma that read this Q has finished

            out = o / gl.expand_dims(gl.convert_layout(gl.sum(l_i, 1), row_o), 1)
            vs = gl.load(vs_ptr + bh * D + offs_d)
            vm = gl.load(vm_ptr + bh * D + offs_d)
            out = out * gl.expand_dims(vs, 0) + gl.expand_dims(vm, 0)  # undo V's channel scale, add its mean
            rows = row0 + gl.arange(0, BM, layout=row_o)
            ptrs = o_ptr + (bh // H) * stride_ob + (bh % H) * stride_oh + gl.expand_dims(rows, 1) * stride_ol
            ptrs = ptrs + gl.expand_dims(offs_d, 0)
            gl.store(ptrs, out.to(o_ptr.dtype.element_ty), mask=gl.expand_dims(rows < L_Q, 1))
            it += n_blocks
            i += 1
        if PINGPONG:
            if WG == 0:
                _wait_turn(0, W)  # take the last warpgroup's last hand-over: no arrival left pending

    # Worker partitions take IR values only: their constexprs are bound here (``args``: _consumer's tuple).
    @gluon.jit
    def _consumer1_pingpong(args):
        _consumer(args, 1, True)

    @gluon.jit
    def _consumer1_lockstep(args):
        _consumer(args, 1, False)

    @gluon.jit
    def _consumer2_pingpong(args):
        _consumer(args, 2, True)

    @gluon.jit
    def _consumer2_lockstep(args):
        _consumer(args, 2, False)

    @gluon.jit
    def _attn_pingpong_kernel(
        q_desc,
        k_desc,
        v_desc,
        qs_ptr,
        ks_ptr,
        vs_ptr,
        vm_ptr,
        o_ptr,
        L_Q,
        L_K,
        LQP,
        LKP,
        H,
        BH,
        stride_ob,
        stride_ol,
        stride_oh,
        STAGES: gl.constexpr,
        PINGPONG: gl.constexpr,
        NUM_WG: gl.constexpr,
        CONSUMER_REGS: gl.constexpr,
        num_warps: gl.constexpr,
    ):
        """Persistent: program p takes the tiles (NUM_WG * 64 query rows of one batch x head) p, p + P, ...,
        query tiles of one head next to each other (the programs running at once share its K and V^T in
        L2). Q has two buffers, so that the producer loads the next tile's Q, K and V^T while the
        consumers finish the current tile."""
        gl.static_assert(k_desc.block_type.shape[0] == 128, "one K scale per block of 128 keys")
        gl.static_assert(num_warps == 4, "the default partition is warpgroup 0")
        gl.static_assert(NUM_WG == 2 or NUM_WG == 3, "two or three consumer warpgroups")
        n_blocks = gl.cdiv(L_K, k_desc.block_type.shape[0])
        PART: gl.constexpr = q_desc.block_type.shape[0]
        n_m = gl.cdiv(L_Q, NUM_WG * PART)
        n_tiles = n_m * BH

        q_smem = gl.allocate_shared_memory(q_desc.dtype, [2 * NUM_WG] + q_desc.block_type.shape, q_desc.layout)
        p_smem = gl.allocate_shared_memory(gl.float8e4nv, [NUM_WG, PART, k_desc.block_type.shape[0]], P_LAYOUT)
        k_bufs = gl.allocate_shared_memory(k_desc.dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
        v_bufs = gl.allocate_shared_memory(v_desc.dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
        q_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        q_empty = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(2):
            mbarrier.init(q_ready.index(i), count=1)
            mbarrier.init(q_empty.index(i), count=NUM_WG)  # one arrival per warpgroup
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)
            mbarrier.init(empty.index(i), count=NUM_WG)

        args = (q_smem, p_smem, k_bufs, v_bufs, q_ready, q_empty, ready, empty, qs_ptr, ks_ptr, vs_ptr, vm_ptr, o_ptr,
                H, n_m, n_tiles, L_Q, L_K, LQP, LKP, stride_ob, stride_ol, stride_oh, n_blocks)
        prod_args = (q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, q_ready, q_empty, ready, empty, n_m, n_tiles,
                     LQP, LKP, n_blocks)
        if NUM_WG == 2:
            gl.warp_specialize(
                [
                    (_consumer, (args, gl.constexpr(0), PINGPONG)),
                    (_consumer1_pingpong if PINGPONG else _consumer1_lockstep, (args,)),
                    (_producer, prod_args),
                ],
                [4, 1],
                [CONSUMER_REGS, PRODUCER_REGS_C],
            )
        else:
            gl.warp_specialize(
                [
                    (_consumer, (args, gl.constexpr(0), PINGPONG)),
                    (_consumer1_pingpong if PINGPONG else _consumer1_lockstep, (args,)),
                    (_consumer2_pingpong if PINGPONG else _consumer2_lockstep, (args,)),
                    (_producer, prod_args),
                ],
                [4, 4, 1],
                [CONSUMER_REGS, CONSUMER_REGS, PRODUCER_REGS_C],
            )

    def descriptors(q8: torch.Tensor, k8: torch.Tensor, v8: torch.Tensor):
        """TMA descriptors of the quantized buffers (``lowp_quant.QuantizedQKV``): Q [BH*LQP, D] and K
        [BH*LKP, D] int8, V^T [BH*D, LKP] fp8."""
        bh, lqp, d = q8.shape
        lkp = k8.shape[1]
        views = (
            (q8.view(bh * lqp, d), [WG_ROWS, d]),
            (k8.view(bh * lkp, d), [BLOCK_N, d]),
            (v8.view(bh * d, lkp), [d, BLOCK_N]),
        )
        return tuple(TensorDescriptor.from_tensor(t, blk, shared_layout(tuple(blk), t.dtype)) for t, blk in views)


def supported(device: torch.device, head_dim: int) -> bool:
    """Whether this kernel runs here: Gluon present, a Hopper GPU (wgmma), head_dim 64 or 128."""
    return (
        AVAILABLE
        and device.type == "cuda"
        and torch.cuda.get_device_capability(device) == (9, 0)
        and head_dim in (64, 128)
    )


def launch(
    qq, lq: int, lk: int, heads: int, out_dtype: torch.dtype, pingpong: bool = True, stages: int = STAGES,
    num_wg: int = NUM_WG,
    programs: int | None = None,
):
    """The attention over quantized inputs ``qq`` (``lowp_quant.QuantizedQKV`` with fp8 V^T, its keys in
    ``key_order``): [B, lq, heads, D] in ``out_dtype``. ``programs``: at most this many persistent programs
    (default: one per SM; tests use few to give each program many tiles)."""
    if qq.v is None or not qq.v_key_order:
        raise ValueError(
            "the Gluon attention kernel reads fp8 V^T with its keys in key_order: quantize V with "
            "lowp_quant.quantize_v(v, key_order=True)"
        )
    bh, lqp, d = qq.q.shape
    out = torch.empty(bh // heads, lq, heads, d, device=qq.q.device, dtype=out_dtype)
    q_desc, k_desc, v_desc = descriptors(qq.q, qq.k, qq.v)
    tiles = -(-lq // (WG_ROWS * num_wg)) * bh
    grid = (min(tiles, programs or torch.cuda.get_device_properties(qq.q.device).multi_processor_count),)
    _attn_pingpong_kernel[grid](
        q_desc,
        k_desc,
        v_desc,
        qq.q_scale,
        qq.k_scale,
        qq.v_scale,
        qq.v_mean,
        out,
        lq,
        lk,
        lqp,
        qq.k.shape[1],
        heads,
        bh,
        out.stride(0),
        out.stride(1),
        out.stride(2),
        STAGES=stages,
        PINGPONG=pingpong,
        NUM_WG=num_wg,
        CONSUMER_REGS=consumer_regs(num_wg),
        num_warps=NUM_WARPS,
    )
    return out


def ast_source(pingpong: bool = True, stages: int = STAGES, head_dim: int = 128, num_wg: int = NUM_WG):
    """What the JIT builds for one launch: a GluonASTSource for ``triton.compile(src,
    target=GPUTarget("cuda", 90, 32), options=dict(num_warps=NUM_WARPS))``, so the kernel can be
    compiled for sm_90 without a GPU (tests, SASS checks)."""
    from triton.runtime.jit import mangle_type

    from lightx2v_quant.quant.kernels.gluon_gemm import gluon_source

    q8 = torch.empty(1, WG_ROWS * num_wg, head_dim, dtype=torch.int8)
    k8 = torch.empty(1, BLOCK_N, head_dim, dtype=torch.int8)
    v8 = torch.empty(1, head_dim, BLOCK_N, dtype=torch.float8_e4m3fn)
    descs = descriptors(q8, k8, v8)
    sig = {name: mangle_type(d) for name, d in zip(("q_desc", "k_desc", "v_desc"), descs)}
    sig.update(qs_ptr="*fp32", ks_ptr="*fp32", vs_ptr="*fp32", vm_ptr="*fp32", o_ptr="*bf16")
    sig.update({n: "i32" for n in ("L_Q", "L_K", "LQP", "LKP", "H", "BH", "stride_ob", "stride_ol", "stride_oh")})
    cons = dict(
        STAGES=stages, PINGPONG=pingpong, NUM_WG=num_wg, CONSUMER_REGS=consumer_regs(num_wg), num_warps=NUM_WARPS
    )
    return gluon_source(_attn_pingpong_kernel, sig, cons)
