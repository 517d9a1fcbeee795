"""W4A16 (int4-g128) GEMM for Hopper in Gluon: the unpacked weights are wgmma's register operand.

``out [M, N] = x [M, K] @ dequant(w_packed [N, K/2], w_scale [N, K/128])^T (+ bias)``, x bf16 / fp16.

Why a second W4A16 kernel next to ``triton_gemm.w4a16_kernel``: there, Triton unpacks each W tile in a
blocked layout, restores the K order with ``interleave`` and converts it to the wgmma operand layout,
and it runs at about half the speed of a bf16 GEMM (0.46-0.53x on an H100). Here:

- **Swap AB.** The product is computed transposed, ``out^T = W x^T``: W's rows are wgmma's M (64 per
  warpgroup), tokens its N (64 to 256), and the unpacked W tile is the *register* A operand, so it never
  goes to shared memory. x arrives by TMA and is the shared-memory B operand.
- **No data moves between threads.** Each thread loads exactly the packed bytes whose nibbles it holds
  in wgmma's A layout: in a 16-wide K slice, lane ``q`` of each quad holds k = 2q, 2q+1, 2q+8, 2q+9,
  i.e. bytes q and q + 4 of the slice's 8 bytes in the checkpoint's layout (k = 2j in the low nibble
  of byte j). ``_packed_layout`` describes those bytes as a linear layout; splitting each byte into its
  two nibbles (``join``) and flattening gives wgmma's operand layout exactly (``convert_layout(...,
  assert_trivial=True)`` checks it at compile time). The weights stay in the checkpoint layout: no
  re-packing in ``prepare``, every other path reads the same tensors.
- **Exact unpacking in three instructions per value** (``_dequant``): one lop3, one add, one multiply,
  giving the reference's (n - 8) * s in fp32, rounded once to the activation dtype. The output equals
  cuBLAS's bf16 ``F.linear`` on the dequantized weight bit for bit (same wgmma K order; H100 probe).
- **Warp specialization.** A 4-warp producer partition (one thread issues the copies) fills a ring of
  (x tile, packed W tile) slots by TMA; two consumer warpgroups (64 weight rows each, 240 registers)
  release a slot through an mbarrier once its wgmmas are done. No CTA-wide barrier: the consumers read
  the packed bytes with ordinary shared-memory loads, which in a single partition made Gluon put a
  ``bar.sync`` of all warps before every refill.
- **Schedule per consumer.** Issue the K step's four wgmmas, unpack the next K step's tile meanwhile
  (its group scales were loaded a step earlier), wait for the wgmmas, release the slot. The next
  operand passes through ``warpgroup_mma_wait``: written into the loop's registers while a wgmma still
  reads them, ptxas serializes every wgmma (C7513), as it does when a wgmma group stays in flight across
  the loop's back edge with a register operand (C7512): hence one group per K step per warpgroup, the
  two warpgroups overlapping each other.
- **Epilogue**: the fp32 accumulator (+ bias), rounded to the output dtype, transposed into a
  [tokens, 64] shared-memory tile per warpgroup and stored by TMA in two token halves. Persistent
  programs walk the tiles in grouped order.

Measured on an H100 (``benchmarks/results/gemm_int4_gluon_nvidia-h100.md``, same run, activation
dtype bf16): 0.78 / 0.90 / 0.82x bf16 ``F.linear`` at the 14B DIT's qkvo / ffn-up / ffn-down (the tl
kernel: 0.46-0.53x; vLLM's Marlin: 0.44 / 0.53 / 0.49x), 0.68x at T5's shapes. With a constant operand
instead of the unpacking (a bound, ``benchmarks/probes/w4a16_variants.py``) the same pipeline runs at
1.03-1.10x bf16: the unpacking's instructions are what remains.

sm_90 only; ``triton_ops.launch_w4a16`` offers these tiles to the tuner on Hopper (medium and large M).
"""

from __future__ import annotations

import torch

from lightx2v_quant.quant.kernels import gluon_gemm
from lightx2v_quant.quant.kernels.triton_quant import cdiv

AVAILABLE = gluon_gemm.AVAILABLE
ROWS = 64  # weight rows per consumer warpgroup (wgmma M)
BLOCK_N = 2 * ROWS  # weight rows per tile: two consumer warpgroups
NUM_WARPS = 4  # the default partition (the producer); the two consumer warpgroups are workers
CONSUMER_REGS = 240  # per consumer thread (setmaxnreg): a 64 x 256 fp32 accumulator is 128 of them

if AVAILABLE:
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

    @gluon.constexpr_function
    def _packed_layout(block_n, block_k, num_warps):
        """The layout of a packed [BLOCK_N, BLOCK_K/2] byte tile in which each thread holds the bytes of
        its wgmma A-operand values (16 rows per warp, warps stacked along N): registers walk row + 8
        and the K slices (byte j + 4: k + 8, then the 16-wide slices), lanes the byte within a slice's
        quad (j + 1, j + 2) and the rows (lane / 4)."""
        regs = [[8, 0]] + [[0, 4 << i] for i in range((block_k // 8).bit_length() - 1)]
        lanes = [[0, 1], [0, 2], [1, 0], [2, 0], [4, 0]]
        warps = [[16 << i, 0] for i in range(num_warps.bit_length() - 1)]
        return gl.DistributedLinearLayout(regs, lanes, warps, [], [block_n, block_k // 2])

    @gluon.jit
    def _scale_rows(s_ptr, off_n, kk, N, stride_sn, rows, BLOCK_K: gl.constexpr):
        """fp32 group scales of rows ``off_n + rows`` for K step ``kk`` (masked past N)."""
        r = off_n + rows
        return gl.load(s_ptr + r * stride_sn + (kk * BLOCK_K) // 128, mask=r < N, other=0.0)

    @gluon.jit
    def _unpack(p, scale):
        """Packed bytes p (int32 [R, C], any layout) and the rows' fp32 group scales ([R]) -> the fp32
        values [R, 2C] in k order (k = 2j + e for nibble e of byte j): (n - 8) * s for each nibble n.

        No shifts and no int-to-float conversions: the bits (p & 0xF) | 0x4B000000 are the float
        2^23 + n_lo and (p & 0xF0) | 0x4B000000 the float 2^23 + 16 n_hi. Subtracting 2^23 + 8
        (2^23 + 128) is exact and leaves n_lo - 8 (16 (n_hi - 8)); times s (s / 16, a power-of-two
        scaling, exact) that is the exact (n - 8) * s rounded once, as the reference computes it. The
        magic number sits in a register (one lop3 per nibble instead of two instructions)."""
        s = gl.expand_dims(scale, 1)
        magic = gl.full(p.shape, 0, gl.int32, layout=p.type.layout) + gl.inline_asm_elementwise(
            "mov.b32 $0, 1258291200;", "=r", [], dtype=gl.int32, is_pure=True, pack=1
        )  # 0x4B000000 from an asm statement: ptxas would otherwise re-materialize it for every use
        lo, hi = gl.inline_asm_elementwise(
            """{
            .reg .b32 %wa, %wb;
            lop3.b32 %wa, $2, 15, $5, 0xEA;
            lop3.b32 %wb, $2, 240, $5, 0xEA;
            sub.f32 %wa, %wa, 0f4B000008;
            sub.f32 %wb, %wb, 0f4B000080;
            mul.f32 $0, %wa, $3;
            mul.f32 $1, %wb, $4;
            }""",
            "=r,=r,r,r,r,r",
            [p, s, s * 0.0625, magic],
            dtype=(gl.float32, gl.float32),
            is_pure=True,
            pack=1,
        )
        return gl.reshape(gl.join(lo, hi), [p.shape[0], 2 * p.shape[1]])

    @gluon.jit
    def _dequant(buf, scale, WG: gl.constexpr, out_dtype: gl.constexpr, op_layout: gl.constexpr):
        """Warpgroup WG's rows of a packed W tile (shared memory) -> wgmma's A operand in registers,
        rounded once to ``out_dtype`` (``_unpack``)."""
        ROWS: gl.constexpr = op_layout.parent.warps_per_cta[0] * 16
        BLOCK_K: gl.constexpr = buf.shape[1] * 2
        p = buf.slice(WG * ROWS, ROWS, dim=0).load(_packed_layout(ROWS, BLOCK_K, 4)).to(gl.int32)
        return gl.convert_layout(_unpack(p, scale).to(out_dtype), op_layout, assert_trivial=True)

    @gluon.jit
    def _w4_consumer(args, WG: gl.constexpr):
        """Warpgroup WG: rows [64 WG, 64 WG + 64) of every W tile, against all BLOCK_T tokens. The next
        K step's tile is unpacked while this step's wgmmas run."""
        (x_bufs, w_bufs, c_smem, ready, empty, c_desc, s_ptr, bias_ptr, M, N, K, stride_sn,
         GROUP_M, HAS_BIAS) = args  # fmt: skip
        STAGES: gl.constexpr = x_bufs.shape[0]
        BLOCK_T: gl.constexpr = x_bufs.shape[1]
        BLOCK_K: gl.constexpr = x_bufs.shape[2]
        BLOCK_N: gl.constexpr = w_bufs.shape[1]
        ROWS: gl.constexpr = c_desc.block_type.shape[1]  # 64: one warpgroup's weight rows
        mma_layout: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_T, 16]
        )
        op_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma_layout, k_width=2)
        rows = WG * ROWS + gl.arange(0, ROWS, layout=gl.SliceLayout(1, _packed_layout(ROWS, BLOCK_K, 4)))
        start = gl.program_id(0)
        nprog = gl.num_programs(0)
        num_pid_t = gl.cdiv(M, BLOCK_T)
        num_pid_n = gl.cdiv(N, BLOCK_N)
        n_tiles = num_pid_t * num_pid_n
        k_tiles = K // BLOCK_K  # >= 2: K % 128 == 0 and BLOCK_K <= 64
        total = gl.cdiv(n_tiles - start, nprog) * k_tiles
        c_buf = c_smem.index(WG)

        # Item 0 unpacked before the loop; the scales run two items ahead of the wgmmas.
        pid_t, pid_n = _tile_coords(start, num_pid_t, num_pid_n, GROUP_M)
        scale = _scale_rows(s_ptr, pid_n * BLOCK_N, 0, N, stride_sn, rows, BLOCK_K)
        mbarrier.wait(ready.index(0), 0)
        w = _dequant(w_bufs.index(0), scale, WG, x_bufs.dtype, op_layout)
        scale = _scale_rows(s_ptr, pid_n * BLOCK_N, 1, N, stride_sn, rows, BLOCK_K)
        item = 0
        for tile in range(start, n_tiles, nprog):
            pid_t, pid_n = _tile_coords(tile, num_pid_t, num_pid_n, GROUP_M)
            # (after the program's last tile: any valid tile; _tile_coords is undefined past the end)
            _, next_pid_n = _tile_coords(gl.minimum(tile + nprog, n_tiles - 1), num_pid_t, num_pid_n, GROUP_M)
            acc = gl.zeros((ROWS, BLOCK_T), dtype=gl.float32, layout=mma_layout)
            for kk in range(k_tiles):
                slot = item % STAGES
                acc = warpgroup_mma(w, x_bufs.index(slot).permute((1, 0)), acc, is_async=True)
                # Meanwhile: unpack item + 1 (with the scales loaded a step ago), load item + 2's scales.
                nxt = item + 1
                mbarrier.wait(ready.index(nxt % STAGES), (nxt // STAGES) & 1, pred=nxt < total)
                w = _dequant(w_bufs.index(nxt % STAGES), scale, WG, x_bufs.dtype, op_layout)
                k2 = kk + 2
                wrap = k2 >= k_tiles
                scale = _scale_rows(
                    s_ptr, gl.where(wrap, next_pid_n, pid_n) * BLOCK_N, gl.where(wrap, k2 - k_tiles, k2), N,
                    stride_sn, rows, BLOCK_K,
                )  # fmt: skip
                # The next operand passes through the wait: its registers are the loop's only after the
                # wgmma reading the current ones is done (else ptxas serializes every wgmma).
                acc, w = warpgroup_mma_wait(num_outstanding=0, deps=(acc, w))
                mbarrier.arrive(empty.index(slot))
                item += 1
            _store_transposed(acc, c_desc, c_buf, bias_ptr, pid_t * BLOCK_T, pid_n * BLOCK_N + WG * ROWS, N, HAS_BIAS)
        tma.store_wait(pendings=0)

    @gluon.jit
    def _store_transposed(acc, c_desc, c_buf, bias_ptr, off_t, off_n, N, HAS_BIAS: gl.constexpr):
        """The epilogue: acc ([weight rows, tokens], fp32) + bias, rounded to the output dtype, transposed
        into the staging buffer and stored by TMA at (tokens off_t, columns off_n), in two token halves."""
        ROWS: gl.constexpr = acc.shape[0]
        HALF_T: gl.constexpr = acc.shape[1] // 2
        if HAS_BIAS:
            cols = off_n + gl.arange(0, ROWS, layout=gl.SliceLayout(1, acc.type.layout))
            bias = gl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(gl.float32)
            acc = acc + gl.expand_dims(bias, 1)
        halves = gl.split(gl.permute(gl.reshape(acc, [ROWS, 2, HALF_T]), [0, 2, 1]))
        for h in gl.static_range(2):
            tma.store_wait(pendings=0)  # the previous store has left the staging buffer
            c_buf.store(gl.permute(halves[h].to(c_desc.dtype), [1, 0]))
            fence_async_shared()
            _tma_store(c_desc, [off_t + h * HALF_T, off_n], c_buf)

    @gluon.jit
    def _w4_consumer0(args):
        _w4_consumer(args, 0)

    @gluon.jit
    def _w4_consumer1(args):
        _w4_consumer(args, 1)

    @gluon.jit
    def w4a16_gluon_kernel(
        x_desc,
        w_desc,
        s_ptr,
        bias_ptr,
        c_desc,
        M,
        N,
        K,
        stride_sn,
        GROUP_M: gl.constexpr,
        STAGES: gl.constexpr,
        HAS_BIAS: gl.constexpr,
        CONSUMER_REGS: gl.constexpr,
        num_warps: gl.constexpr,
    ):
        """out = x @ dequant(W)^T (+ bias) through ``c_desc`` ([BLOCK_T / 2, 64] blocks). Four warps load
        (the default partition: one issues the TMA copies), two consumer warpgroups compute. Tensors in
        the ``tl`` kernel's order (x, W, scales, bias, out), so launch replays pass them alike."""
        x_bufs = gl.allocate_shared_memory(x_desc.dtype, [STAGES] + x_desc.block_type.shape, x_desc.layout)
        w_bufs = gl.allocate_shared_memory(w_desc.dtype, [STAGES] + w_desc.block_type.shape, w_desc.layout)
        c_smem = gl.allocate_shared_memory(c_desc.dtype, [2] + c_desc.block_type.shape, c_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)
            mbarrier.init(empty.index(i), count=2)  # one arrival per consumer warpgroup
        args = (x_bufs, w_bufs, c_smem, ready, empty, c_desc, s_ptr, bias_ptr, M, N, K, stride_sn,
                GROUP_M, HAS_BIAS)  # fmt: skip
        gl.warp_specialize(
            [
                (ring_producer, (x_desc, w_desc, x_bufs, w_bufs, ready, empty, M, N, K, GROUP_M)),
                (_w4_consumer0, (args,)),
                (_w4_consumer1, (args,)),
            ],
            [4, 4],
            [CONSUMER_REGS, CONSUMER_REGS],
        )

    def descriptors(x, w_packed, out, block_t: int, block_n: int, block_k: int):
        """TMA descriptors for x [M, K], the packed W [N, K/2] bytes and out [M, N] (stored per warpgroup
        in token halves: [block_t / 2, 64] blocks)."""
        from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

        blocks = ((x, [block_t, block_k]), (w_packed, [block_n, block_k // 2]), (out, [block_t // 2, ROWS]))
        return tuple(
            TensorDescriptor.from_tensor(t, b, gluon_gemm.shared_layout(tuple(b), t.dtype)) for t, b in blocks
        )


def supports(x_dtype: torch.dtype, out_dtype: torch.dtype) -> bool:
    """Whether this Triton has the kernel and it takes these dtypes (16-bit activations). The caller also
    checks TMA's alignment of x, the packed W and the output (``triton_ops._tma_ok``)."""
    return (
        AVAILABLE
        and x_dtype in (torch.bfloat16, torch.float16)
        and out_dtype in (torch.bfloat16, torch.float16, torch.float32)
    )


def meta(cfg, has_bias: bool) -> dict:
    """The launch keywords of a tile config (``cfg.block_m`` tokens x 128 weight rows, ``cfg.block_k``
    <= 64, ``cfg.num_stages`` ring slots)."""
    return dict(
        GROUP_M=cfg.group_m,
        STAGES=cfg.num_stages,
        HAS_BIAS=has_bias,
        CONSUMER_REGS=CONSUMER_REGS,
        num_warps=NUM_WARPS,
    )


def grid_and_args(x, w_packed, w_scale, bias, out, cfg, num_sms: int) -> tuple[tuple, tuple]:
    """Grid (persistent: at most one program per SM) and arguments of one launch."""
    (m, k), n = x.shape, w_packed.shape[0]
    x_desc, w_desc, c_desc = descriptors(x, w_packed, out, cfg.block_m, BLOCK_N, cfg.block_k)
    bias_arg = w_scale if bias is None else bias
    args = (x_desc, w_desc, w_scale, bias_arg, c_desc, m, n, k, w_scale.stride(0))
    return (min(num_sms, cdiv(m, cfg.block_m) * cdiv(n, BLOCK_N)),), args


def ast_source(cfg, x_dtype=torch.bfloat16, has_bias: bool = True, out_dtype=None):
    """What the JIT builds for one tile config (block_m = tokens, block_n = weight rows), for
    ``triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=...))`` without a GPU."""
    from triton.runtime.jit import mangle_type

    k = 256
    x = torch.empty(cfg.block_m, k, dtype=x_dtype)
    w = torch.empty(cfg.block_n, k // 2, dtype=torch.uint8)
    out = torch.empty(cfg.block_m, cfg.block_n, dtype=out_dtype or x_dtype)
    descs = descriptors(x, w, out, cfg.block_m, cfg.block_n, cfg.block_k)
    out_ty = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32"}[out_dtype or x_dtype]
    sig = {"x_desc": mangle_type(descs[0]), "w_desc": mangle_type(descs[1]), "s_ptr": "*fp32", "bias_ptr": out_ty}
    sig.update(c_desc=mangle_type(descs[2]), M="i32", N="i32", K="i32", stride_sn="i32")
    return gluon_gemm.gluon_source(w4a16_gluon_kernel, sig, meta(cfg, has_bias))
