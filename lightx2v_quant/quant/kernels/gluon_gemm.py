"""W8A8 GEMM for Hopper written in Gluon (Triton's explicit-layout dialect): per-token x per-channel scales.

Why a second kernel next to ``triton_gemm.w8a8_tma_kernel``: Triton's software pipeliner keeps a
wgmma in flight across K steps only when its accumulator is fp32 (``dotCanBeProperlyAsync``, rule
2.1). An int8 GEMM accumulates in int32, so the ``tl`` kernel waits for every int8 wgmma to finish
before issuing the next one, and the tensor cores drain once per K step. Gluon issues the wgmmas
itself: here each K step issues ``wgmma(k)`` asynchronously and then waits until at most one is
outstanding, i.e. until ``wgmma(k-1)`` is done, whose operand buffers are then refilled. The same
schedule serves fp8.

Schedule (persistent, one program per SM, tiles ``start, start + P, ...`` in grouped order): the
(tile, K step) pairs of a program form one flat sequence. TMA loads run ``STAGES - 1`` items ahead
of the wgmmas, across tile boundaries, so the next tile's first operands arrive while this tile's
epilogue runs. The loader tracks its tile incrementally (no integer division between two wgmmas).
Epilogue: ``acc * a_scale[m] * w_scale[n] (+ bias)`` in fp32 (the tl kernel's order, so the results
are bit-identical to it), rounded to the output dtype, staged in shared memory and written by TMA in
two column halves (half the staging buffer: room for a four-deep operand ring, and half the
per-thread scale and bias registers). The scale and bias vectors are loaded when the tile starts,
in a compact layout, so their latency hides behind the K loop.

Measured on an H100 (GEMM alone, 14B 480p shapes, ``benchmarks/probes/gluon_gemm_probe.py``): int8
1.07 / 3.31 / 3.00 ms against the tl kernel's 1.35 / 4.89 / 3.84 ms (qkvo / ffn-up / ffn-down); fp8
within 1% of the tl kernel on qkvo and ffn-up, 3% faster on ffn-down. The tuner picks per shape.

Gluon kernels run only on sm_90 GPUs (no CPU interpreter): ``AVAILABLE`` says whether this Triton
has Gluon; the launcher in ``triton_ops`` offers these tiles to the tuner only on Hopper.
"""

from __future__ import annotations

import functools

import torch

try:  # Gluon ships with Triton >= 3.5; older Tritons simply never offer these tiles
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    # The tl kernels' grouped tile order, called from Gluon as is (same PTX as a Gluon copy).
    from lightx2v_quant.quant.kernels.triton_gemm import _tile_coords

    # TMA copies were renamed after Triton 3.6 (async_load / async_store); the old names now raise.
    # (tma_load and shared_layout serve the Gluon attention kernel too: attention/lowp_gluon.py)
    tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
    _tma_store = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global
    _thread_barrier = getattr(gl, "thread_barrier", None) or gl.barrier  # (renamed after Triton 3.6)
    _GL_DTYPES = {
        torch.int8: gl.int8,
        torch.uint8: gl.uint8,  # packed int4 (gluon_w4a16)
        torch.float8_e4m3fn: gl.float8e4nv,
        torch.bfloat16: gl.bfloat16,
        torch.float16: gl.float16,
        torch.float32: gl.float32,
    }
    AVAILABLE = True
except ImportError:  # pragma: no cover - depends on the installed Triton
    AVAILABLE = False


if AVAILABLE:

    @gluon.jit
    def _load_next(
        item,
        kk,
        t,
        off_m,
        off_n,
        a_desc,
        b_desc,
        a_bufs,
        b_bufs,
        ready,
        total,
        k_tiles,
        start,
        nprog,
        num_pid_m,
        num_pid_n,
        GROUP_M: gl.constexpr,
        STAGES: gl.constexpr,
        LOAD_A: gl.constexpr = True,
        LOAD_B: gl.constexpr = True,
    ):
        """TMA loads of flat item ``item`` (K step ``kk`` of this program's tile ``t``, at ``off_m,
        off_n``) into ring slot ``item % STAGES``, predicated off past the end of the program's work;
        returns the loader's next (K step, tile, offsets), with divisions only when it crosses into a
        new tile, so the K loop's path from one wgmma to the next stays short. ``LOAD_A`` / ``LOAD_B``
        False: that operand is loaded by another call (the slot's byte count is announced with B)."""
        BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
        BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
        BLOCK_N: gl.constexpr = b_desc.block_type.shape[0]
        slot = item % STAGES
        pred = item < total
        bar = ready.index(slot)
        if LOAD_B:
            mbarrier.expect(bar, a_desc.block_type.nbytes + b_desc.block_type.nbytes, pred=pred)
        if LOAD_A:
            tma_load(a_desc, [off_m, kk * BLOCK_K], bar, a_bufs.index(slot), pred)
        if LOAD_B:
            tma_load(b_desc, [off_n, kk * BLOCK_K], bar, b_bufs.index(slot), pred)
        kk += 1
        if kk == k_tiles:
            kk = 0
            t += 1
            pid_m, pid_n = _tile_coords(start + t * nprog, num_pid_m, num_pid_n, GROUP_M)
            off_m = pid_m * BLOCK_M
            off_n = pid_n * BLOCK_N
        return kk, t, off_m, off_n

    @gluon.jit
    def _prologue(
        a_desc,
        b_desc,
        a_bufs,
        b_bufs,
        ready,
        total,
        k_tiles,
        start,
        nprog,
        num_pid_m,
        num_pid_n,
        GROUP_M: gl.constexpr,
        STAGES: gl.constexpr,
        LOAD_A: gl.constexpr,
        LOAD_B: gl.constexpr,
    ):
        """The loads of the first STAGES - 1 items (of the operands chosen); returns the loader state."""
        BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
        BLOCK_N: gl.constexpr = b_desc.block_type.shape[0]
        lk = 0
        lt = 0
        pid_m, pid_n = _tile_coords(start, num_pid_m, num_pid_n, GROUP_M)
        l_off_m = pid_m * BLOCK_M
        l_off_n = pid_n * BLOCK_N
        for item in gl.static_range(STAGES - 1):
            lk, lt, l_off_m, l_off_n = _load_next(
                item, lk, lt, l_off_m, l_off_n, a_desc, b_desc, a_bufs, b_bufs, ready, total, k_tiles,
                start, nprog, num_pid_m, num_pid_n, GROUP_M, STAGES, LOAD_A, LOAD_B,
            )  # fmt: skip
        return lk, lt, l_off_m, l_off_n

    @gluon.jit
    def _load_residual_half(c_desc, r_bar, c_smem, off_m, off_n):
        """TMA load of the residual's half tile at (off_m, off_n) into the output staging buffer, once the
        last store has left it; arrives on ``r_bar``."""
        tma.store_wait(pendings=0)
        mbarrier.expect(r_bar, c_desc.block_type.nbytes)
        tma_load(c_desc, [off_m, off_n], r_bar, c_smem)

    @gluon.jit
    def w8a8_gluon_kernel(
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
        USE_PDL: gl.constexpr = False,
    ):
        """out = (A * sa) @ (W * sb)^T (+ bias), stored through ``c_desc``."""
        _w8a8_gluon(
            a_desc, b_desc, c_desc, sa_ptr, sb_ptr, bias_ptr, sa_ptr, sa_ptr, M, N, K, 0,
            GROUP_M, STAGES, INSTR_N, HAS_BIAS, IS_INT8, num_warps, USE_PDL, False, False,
        )  # fmt: skip

    @gluon.jit
    def w8a8_gluon_add_kernel(
        a_desc,
        b_desc,
        c_desc,
        sa_ptr,
        sb_ptr,
        bias_ptr,
        res_ptr,
        gate_ptr,
        M,
        N,
        K,
        stride_rm,
        GROUP_M: gl.constexpr,
        STAGES: gl.constexpr,
        INSTR_N: gl.constexpr,
        HAS_BIAS: gl.constexpr,
        IS_INT8: gl.constexpr,
        HAS_GATE: gl.constexpr,
        num_warps: gl.constexpr,
    ):
        """The residual add in the epilogue: R += y * gate (or R += y), y the GEMM's output rounded to R's
        dtype first (what the separate add reads back), the sum in fp32; ``c_desc`` describes R itself
        (``res_ptr``, row stride ``stride_rm``), each tile being read and then written by its own program.
        gate: [N] fp32."""
        _w8a8_gluon(
            a_desc, b_desc, c_desc, sa_ptr, sb_ptr, bias_ptr, res_ptr, gate_ptr, M, N, K, stride_rm,
            GROUP_M, STAGES, INSTR_N, HAS_BIAS, IS_INT8, num_warps, False, True, HAS_GATE,
        )  # fmt: skip

    @gluon.jit
    def _w8a8_gluon(
        a_desc,
        b_desc,
        c_desc,
        sa_ptr,
        sb_ptr,
        bias_ptr,
        res_ptr,
        gate_ptr,
        M,
        N,
        K,
        stride_rm,
        GROUP_M: gl.constexpr,
        STAGES: gl.constexpr,
        INSTR_N: gl.constexpr,
        HAS_BIAS: gl.constexpr,
        IS_INT8: gl.constexpr,
        num_warps: gl.constexpr,
        USE_PDL: gl.constexpr,
        RESIDUAL: gl.constexpr,
        HAS_GATE: gl.constexpr,
    ):
        BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
        BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
        BLOCK_N: gl.constexpr = b_desc.block_type.shape[0]
        HALF_N: gl.constexpr = BLOCK_N // 2  # the epilogue and its TMA store work on column halves
        # Warps stacked along M (16 rows each): 8 warps = two warpgroups, 64 rows each.
        mma_layout: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, INSTR_N, 32]
        )
        acc_dtype: gl.constexpr = gl.int32 if IS_INT8 else gl.float32
        vec_layout: gl.constexpr = gl.BlockedLayout([1], [32], [num_warps], [0])  # epilogue vectors

        a_bufs = gl.allocate_shared_memory(a_desc.dtype, [STAGES] + a_desc.block_type.shape, a_desc.layout)
        b_bufs = gl.allocate_shared_memory(b_desc.dtype, [STAGES] + b_desc.block_type.shape, b_desc.layout)
        c_smem = gl.allocate_shared_memory(c_desc.dtype, c_desc.block_type.shape, c_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        # RESIDUAL: the residual's half tiles arrive by TMA in the staging buffer (its barrier: r_bar)
        r_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        if RESIDUAL:
            mbarrier.init(r_bar, count=1)
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)

        start = gl.program_id(0)
        nprog = gl.num_programs(0)
        num_pid_m = gl.cdiv(M, BLOCK_M)
        num_pid_n = gl.cdiv(N, BLOCK_N)
        k_tiles = gl.cdiv(K, BLOCK_K)
        my_tiles = gl.cdiv(num_pid_m * num_pid_n - start, nprog)
        total = my_tiles * k_tiles

        # Loader state after the prologue: K step and tile of the next load, and that tile's offsets.
        if USE_PDL:
            # Launched while the quantizer still runs (programmatic dependent launch): the weights'
            # first stages load now, the activations (and their scales, read per tile below) only
            # once the quantizer's grid has completed.
            _prologue(
                a_desc, b_desc, a_bufs, b_bufs, ready, total, k_tiles, start, nprog, num_pid_m, num_pid_n,
                GROUP_M, STAGES, False, True,
            )  # fmt: skip
            gl.inline_asm_elementwise("griddepcontrol.wait; // $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1)
        lk, lt, l_off_m, l_off_n = _prologue(
            a_desc, b_desc, a_bufs, b_bufs, ready, total, k_tiles, start, nprog, num_pid_m, num_pid_n,
            GROUP_M, STAGES, True, not USE_PDL,
        )  # fmt: skip

        item = 0  # flat (tile, K step) counter: ring slot and barrier phase
        for t in range(my_tiles):
            # A fresh accumulator per tile: its registers die in the epilogue instead of being carried
            # into the next tile's first wgmma (which would double the epilogue's register needs).
            acc = gl.zeros((BLOCK_M, BLOCK_N), dtype=acc_dtype, layout=mma_layout)
            pid_m, pid_n = _tile_coords(start + t * nprog, num_pid_m, num_pid_n, GROUP_M)
            off_m = pid_m * BLOCK_M
            off_n = pid_n * BLOCK_N
            # The epilogue's vectors are fetched now, one or two registers per thread, so their memory
            # latency hides behind the K loop; the epilogue only redistributes them.
            rows = off_m + gl.arange(0, BLOCK_M, layout=vec_layout)
            sa_v = gl.load(sa_ptr + rows, mask=rows < M, other=0.0)
            cols0 = off_n + gl.arange(0, HALF_N, layout=vec_layout)
            cols1 = cols0 + HALF_N
            sbs = (
                gl.load(sb_ptr + cols0, mask=cols0 < N, other=0.0),
                gl.load(sb_ptr + cols1, mask=cols1 < N, other=0.0),
            )
            if HAS_BIAS:
                biases = (
                    gl.load(bias_ptr + cols0, mask=cols0 < N, other=0.0).to(gl.float32),
                    gl.load(bias_ptr + cols1, mask=cols1 < N, other=0.0).to(gl.float32),
                )
            else:
                biases = sbs
            if HAS_GATE:
                gates = (
                    gl.load(gate_ptr + cols0, mask=cols0 < N, other=0.0),
                    gl.load(gate_ptr + cols1, mask=cols1 < N, other=0.0),
                )
            else:
                gates = sbs
            for kk in range(k_tiles):
                slot = item % STAGES
                mbarrier.wait(ready.index(slot), (item // STAGES) & 1)
                acc = warpgroup_mma(
                    a_bufs.index(slot), b_bufs.index(slot).permute((1, 0)), acc, is_async=True
                )
                # At most one wgmma outstanding: wgmma(item - 1) is done, so its slot can be refilled.
                acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
                lk, lt, l_off_m, l_off_n = _load_next(
                    item + STAGES - 1, lk, lt, l_off_m, l_off_n, a_desc, b_desc, a_bufs, b_bufs, ready, total,
                    k_tiles, start, nprog, num_pid_m, num_pid_n, GROUP_M, STAGES,
                )  # fmt: skip
                item += 1
            if RESIDUAL:
                # The first half of the residual tile loads while the last wgmma runs. (Issued in the
                # K loop's first step instead, it slowed the loop: ffn-down 1.71 -> 1.75 ms on an H100.)
                _load_residual_half(c_desc, r_bar, c_smem, off_m, off_n)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            # The epilogue runs on column halves: a thread holds BLOCK_N / 4 columns of each vector in
            # the accumulator's layout, so half the w_scale and bias vectors fit beside the fp32 tile.
            halves = gl.split(gl.permute(gl.reshape(acc, [BLOCK_M, 2, HALF_N]), [0, 2, 1]))
            for h in gl.static_range(2):
                part = halves[h]
                sa = gl.convert_layout(sa_v, gl.SliceLayout(1, part.type.layout))
                sb = gl.convert_layout(sbs[h], gl.SliceLayout(0, part.type.layout))
                out = part.to(gl.float32) * gl.expand_dims(sa, 1) * gl.expand_dims(sb, 0)
                if HAS_BIAS:
                    out = out + gl.expand_dims(
                        gl.convert_layout(biases[h], gl.SliceLayout(0, part.type.layout)), 0
                    )
                if RESIDUAL:
                    y = out.to(c_desc.dtype).to(gl.float32)  # as the separate add would read it back
                    if h == 1:  # the staging buffer held the first half's output until now
                        _load_residual_half(c_desc, r_bar, c_smem, off_m, off_n + HALF_N)
                    mbarrier.wait(r_bar, h)  # two loads per tile: phases 0, 1
                    r = c_smem.load(part.type.layout).to(gl.float32)
                    _thread_barrier()  # every thread has read its part before any overwrites it
                    if HAS_GATE:
                        g = gl.convert_layout(gates[h], gl.SliceLayout(0, part.type.layout))
                        out = r + y * gl.expand_dims(g, 0)
                    else:
                        out = r + y
                else:
                    tma.store_wait(pendings=0)  # the previous store has left the staging buffer
                c_smem.store(out.to(c_desc.dtype))
                fence_async_shared()
                _tma_store(c_desc, [off_m, off_n + h * HALF_N], c_smem)
        tma.store_wait(pendings=0)
        for i in gl.static_range(STAGES):
            mbarrier.invalidate(ready.index(i))
        if RESIDUAL:
            mbarrier.invalidate(r_bar)

    # -- a producer partition for warp-specialized kernels (gluon_w4a16) ------------------------------
    @gluon.jit
    def ring_producer(a_desc, b_desc, a_bufs, b_bufs, ready, empty, M, N, K, GROUP_M: gl.constexpr):
        """A producer partition (one of its threads issues the copies): the A and B tiles of every (tile,
        K step) of this program into the ring, each slot once the ``empty`` barrier says both consumer
        warpgroups released it. B's K coordinate is in its own elements (BLOCK_K / 2 bytes of packed
        int4 for ``gluon_w4a16``)."""
        STAGES: gl.constexpr = a_bufs.shape[0]
        BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
        BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
        BLOCK_N: gl.constexpr = b_desc.block_type.shape[0]
        B_K: gl.constexpr = b_desc.block_type.shape[1]
        start = gl.program_id(0)
        nprog = gl.num_programs(0)
        num_pid_m = gl.cdiv(M, BLOCK_M)
        num_pid_n = gl.cdiv(N, BLOCK_N)
        k_tiles = gl.cdiv(K, BLOCK_K)
        item = 0
        for tile in range(start, num_pid_m * num_pid_n, nprog):
            pid_m, pid_n = _tile_coords(tile, num_pid_m, num_pid_n, GROUP_M)
            for kk in range(k_tiles):
                slot = item % STAGES
                mbarrier.wait(empty.index(slot), ((item // STAGES) & 1) ^ 1, pred=item >= STAGES)
                bar = ready.index(slot)
                mbarrier.expect(bar, a_desc.block_type.nbytes + b_desc.block_type.nbytes)
                tma_load(a_desc, [pid_m * BLOCK_M, kk * BLOCK_K], bar, a_bufs.index(slot))
                tma_load(b_desc, [pid_n * BLOCK_N, kk * B_K], bar, b_bufs.index(slot))
                item += 1

    @functools.lru_cache(maxsize=None)
    def shared_layout(block_shape: tuple[int, ...], torch_dtype) -> "gl.NVMMASharedLayout":
        """The TMA / wgmma shared-memory layout of a block (cached: descriptors are made per call)."""
        return gl.NVMMASharedLayout.get_default_for(list(block_shape), _GL_DTYPES[torch_dtype])

    def descriptors(a, w, out, block_m: int, block_n: int, block_k: int):
        """TMA descriptors for A [M, K], W [N, K] and the output [M, N] (stored in column halves)."""
        blocks = ((a, [block_m, block_k]), (w, [block_n, block_k]), (out, [block_m, block_n // 2]))
        return tuple(TensorDescriptor.from_tensor(t, b, shared_layout(tuple(b), t.dtype)) for t, b in blocks)


def instr_n(block_n: int, is_int8: bool) -> int:
    """wgmma instruction width: the whole tile for fp8; at most 128 for int8 (PTX allows fewer N
    sizes for 8-bit integers; 128 divides every tile width we use)."""
    return min(block_n, 128) if is_int8 else min(block_n, 256)


def gluon_source(kernel, sig: dict, constexprs: dict):
    """A GluonASTSource of ``kernel`` for ``triton.compile``: ``sig`` maps the runtime parameters, in
    order, to their mangled types; ``constexprs`` (the rest, in order) to their values."""
    from triton.experimental.gluon._runtime import GluonASTSource

    names = list(sig) + list(constexprs)
    sig = {**sig, **{name: "constexpr" for name in constexprs}}
    return GluonASTSource(kernel, sig, constexprs={(names.index(n),): v for n, v in constexprs.items()})


def ast_source(cfg, a_dtype, out_dtype, has_bias: bool = True, use_pdl: bool = False, add: str | None = None):
    """What the JIT builds for one tile config (``triton_tuning.TileConfig``): a GluonASTSource for
    ``triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=...))``, so the
    kernel can be compiled for sm_90 without a GPU (tests, ``benchmarks/triton_compile_check.py``).
    ``add``: the residual-add kernel instead, "gate" or "plain"."""
    from triton.runtime.jit import mangle_type

    k = 256  # any row length that keeps TMA's 16-byte row alignment
    a = torch.empty(cfg.block_m, k, dtype=a_dtype)
    w = torch.empty(cfg.block_n, k, dtype=a_dtype)
    out = torch.empty(cfg.block_m, cfg.block_n, dtype=out_dtype)
    descs = descriptors(a, w, out, cfg.block_m, cfg.block_n, cfg.block_k)
    is_int8 = a_dtype == torch.int8
    sig = {name: mangle_type(d) for name, d in zip(("a_desc", "b_desc", "c_desc"), descs)}
    out_ty = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32"}[out_dtype]
    sig.update(sa_ptr="*fp32", sb_ptr="*fp32", bias_ptr=out_ty)
    if add:
        sig.update(res_ptr=out_ty, gate_ptr="*fp32")
    sig.update(M="i32", N="i32", K="i32")
    if add:
        sig.update(stride_rm="i32")
    cons = {
        "GROUP_M": cfg.group_m,
        "STAGES": cfg.num_stages,
        "INSTR_N": instr_n(cfg.block_n, is_int8),
        "HAS_BIAS": has_bias,
        "IS_INT8": is_int8,
    }
    cons.update({"HAS_GATE": add == "gate", "num_warps": cfg.num_warps} if add else
                {"num_warps": cfg.num_warps, "USE_PDL": use_pdl})
    return gluon_source(w8a8_gluon_add_kernel if add else w8a8_gluon_kernel, sig, cons)
