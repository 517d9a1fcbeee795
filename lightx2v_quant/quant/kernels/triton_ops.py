"""Our Triton kernels as plain functions: activation quantizers and the three GEMMs.

``quantize_per_token(x, fmt)`` is also what the `torch` kernel uses for its activations on CUDA. The
functions take an explicit ``config`` (tests, benchmarks) or ask the tuner (``triton_tuning``) for the
fastest config of this shape. They check their inputs and raise ``ValueError`` naming the problem. The
fused linears that ``native_triton.TritonKernel.apply`` calls are in ``triton_linear``; they use the
unchecked launchers here (``launch_*``), which return a :class:`Launched` record to replay from.
"""

from __future__ import annotations

import functools

import torch
from triton.tools.tensor_descriptor import TensorDescriptor

from lightx2v_quant.quant import formats as qf
from lightx2v_quant.quant.kernels import gluon_gemm, gluon_w4a16
from lightx2v_quant.quant.kernels.triton_gemm import w4a16_kernel, w8a8_kernel, w8a8_tma_kernel
from lightx2v_quant.quant.kernels.triton_launch import Launched, run_kernel
from lightx2v_quant.quant.kernels.triton_quant import (
    INTERPRETING,
    QUANT_PARAMS,
    cdiv,
    pdl_enabled,
    per_group_launch,
    per_token_launch,
)
from lightx2v_quant.quant.kernels.triton_tuning import (
    FP8_BLOCK,
    INTERPRETER_CONFIG,
    QUANT,
    TUNER,
    W4A16,
    W8A8,
    QuantConfig,
    TileConfig,
    candidates,
    default_quant_config,
    m_bucket,
    m_class,
    quant_candidates,
)

__all__ = [
    "quantize_per_token",
    "quantize_per_token_group",
    "w8a8_matmul",
    "fp8_block_matmul",
    "w4a16_matmul",
    "TileConfig",
    "QuantConfig",
]

_OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
INTERPRETER_SMS = 3  # persistent grid size under the interpreter: small, so tests see multi-tile loops


@functools.lru_cache(maxsize=None)
def device_info(device: torch.device) -> tuple[int, int, int]:
    """(sm as an integer, multiprocessor count, shared memory per block in bytes) of a CUDA device."""
    if device.type != "cuda":
        return 0, INTERPRETER_SMS, 1 << 30
    props = torch.cuda.get_device_properties(device)
    smem = getattr(props, "shared_memory_per_block_optin", 0)
    if not smem:
        import triton

        smem = triton.runtime.driver.active.utils.get_device_properties(device.index or 0)["max_shared_mem"]
    return props.major * 10 + props.minor, props.multi_processor_count, int(smem)


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def _tma_ok(*tensors: torch.Tensor) -> bool:
    """TMA descriptors need unit inner stride and 16-byte aligned base and row pitch."""
    return all(
        t.stride(-1) == 1 and t.data_ptr() % 16 == 0 and (t.stride(0) * t.element_size()) % 16 == 0
        for t in tensors
    )


def _tuned(kind: str, key: tuple, a: torch.Tensor, out: torch.Tensor, a_bytes: float, tma: bool, launch):
    """The tile config for a GEMM key seen for the first time: the tuner times the candidates."""
    if INTERPRETING:
        return INTERPRETER_CONFIG
    sm, _, max_smem = device_info(a.device)
    cands = candidates(kind, a.shape[0], sm, max_smem, a_bytes, out.element_size())
    if not tma:
        cands = [c for c in cands if not c.tma] or [TileConfig(64, 64, 64, 4, 3)]
    # Candidates were benchmarked into `out`: restore "never written" so the real run is checked alone.
    return TUNER.choose(key, cands, launch, lambda: out.fill_(float("nan")))


# -- per-token quantizer ---------------------------------------------------------------------------
def launch_per_token(
    x: torch.Tensor, fmt_name: str, config: QuantConfig | None = None
) -> tuple[torch.Tensor, torch.Tensor, Launched]:
    """Unchecked: x [M, K] with unit column stride, M > 0, a per-token format. -> (q, scale [M, 1])."""
    m, k = x.shape
    qdtype = QUANT_PARAMS[fmt_name][0]
    q = torch.empty((m, k), dtype=qdtype, device=x.device)
    scale = torch.empty((m, 1), dtype=torch.float32, device=x.device)

    def launch(cfg: QuantConfig, warmup: bool = False):
        kernel, args, meta = per_token_launch(x, q, scale, fmt_name, cfg.num_warps)
        return run_kernel(kernel, (m,), args, meta, warmup)

    if config is None:
        if INTERPRETING:
            config = default_quant_config(k, x.element_size())
        else:
            key = (QUANT, fmt_name, str(x.dtype), m_class(m), k)
            config = TUNER.best.get(key) or TUNER.choose(
                key, quant_candidates(k, x.element_size()), launch, cls=QuantConfig
            )
    return q, scale, launch(config)


def quantize_per_token(
    x: torch.Tensor, fmt_name: str, *, config: QuantConfig | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] (bf16/fp16/fp32) -> (q [M, K] fp8 or int8, scale [M, 1] fp32), bit-identical to the
    format's reference. ``config``: a launch shape instead of the tuned one (tests, benchmarks)."""
    if fmt_name not in QUANT_PARAMS:
        raise ValueError(f"quantize_per_token handles {', '.join(QUANT_PARAMS)}, not {fmt_name!r}")
    _check(x.dim() == 2, f"expected a 2-D activation [M, K], got shape {tuple(x.shape)}")
    _check(x.dtype in _OUT_DTYPES, f"activations must be bf16, fp16 or fp32, got {x.dtype}")
    _check(x.shape[1] > 0, "cannot quantize activations with K == 0")
    x = x if x.stride(1) == 1 else x.contiguous()
    if x.shape[0] == 0:
        qdtype = QUANT_PARAMS[fmt_name][0]
        return torch.empty(x.shape, dtype=qdtype, device=x.device), x.new_empty((0, 1), dtype=torch.float32)
    q, scale, _ = launch_per_token(x, fmt_name, config)
    return q, scale


def launch_per_token_group(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Launched]:
    """Unchecked: x [M, K], unit column stride, M > 0, K % 128 == 0 -> (q, scale_t [K/128, M])."""
    m, k = x.shape
    q = torch.empty((m, k), dtype=qf.FP8_DTYPE, device=x.device)
    scale_t = torch.empty((k // qf.GROUP, m), dtype=torch.float32, device=x.device)
    kernel, grid, args, meta = per_group_launch(x, q, scale_t, qf.GROUP)
    return q, scale_t, run_kernel(kernel, grid, args, meta, False)


def quantize_per_token_group(x: torch.Tensor, group: int = qf.GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (q [M, K] fp8, scale [M, K/group] fp32) as ``Fp8Block128.quantize_activation``.

    The scale is returned as a transposed view of an M-major [K/group, M] buffer: the block GEMM reads
    one K-group's scales for a tile of rows as a contiguous vector.
    """
    _check(x.dim() == 2, f"expected a 2-D activation [M, K], got shape {tuple(x.shape)}")
    _check(group == qf.GROUP, f"the fp8-block128 format has groups of {qf.GROUP}, got {group}")
    k = x.shape[1]
    _check(k % group == 0, f"per-token-group quantization needs K % {group} == 0, got K={k}")
    x = x if x.stride(1) == 1 else x.contiguous()
    m, k = x.shape
    if m == 0 or k == 0:
        q = torch.empty((m, k), dtype=qf.FP8_DTYPE, device=x.device)
        return q, torch.empty((k // group, m), dtype=torch.float32, device=x.device).t()
    q, scale_t, _ = launch_per_token_group(x)
    return q, scale_t.t()


# -- W8A8 (per-channel and block-128) --------------------------------------------------------------
_META: dict[tuple, dict] = {}  # launch keyword arguments per (config, flags): built once, not per call
# Programmatic dependent launch of the Gluon W8A8 kernel (its weight stages load while the quantizer
# finishes) up to this K. Measured on an H100: CLIP's K = 1280 GEMM 0.91-0.93x -> 0.97-1.00x over bf16
# with it; T5's K = 4096 GEMM 1.39-1.42x -> 1.12-1.17x (slower, reason not found), so longer K does not.
GLUON_PDL_MAX_K = 2048


def _w8a8_meta(
    cfg: TileConfig, has_bias: bool, block_scaled: bool, is_int8: bool, even_k: bool, num_sms: int, pdl: bool
) -> dict:
    key = (cfg, has_bias, block_scaled, is_int8, even_k, num_sms, pdl)
    meta = _META.get(key)
    if meta is None and cfg.gluon:
        meta = dict(
            GROUP_M=cfg.group_m,
            STAGES=cfg.num_stages,
            INSTR_N=gluon_gemm.instr_n(cfg.block_n, is_int8),
            HAS_BIAS=has_bias,
            IS_INT8=is_int8,
            USE_PDL=pdl,
            num_warps=cfg.num_warps,
        )
        if pdl:
            meta["launch_pdl"] = True
        _META[key] = meta
    if meta is None:
        meta = dict(
            BLOCK_M=cfg.block_m,
            BLOCK_N=cfg.block_n,
            BLOCK_K=cfg.block_k,
            GROUP_M=cfg.group_m,
            HAS_BIAS=has_bias,
            BLOCK_SCALED=block_scaled,
            IS_INT8=is_int8,
            USE_PDL=pdl,
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
        )
        if pdl:
            meta["launch_pdl"] = True
        if cfg.tma:
            meta.update(NUM_SMS=num_sms, SUBTILE=cfg.subtile)
        else:
            meta["EVEN_K"] = even_k
        _META[key] = meta
    return meta


def launch_w8a8(
    a, w, sa, sb, bias, out, stride_sak, stride_sbn, block_scaled, config, fresh
) -> Launched | None:
    """Unchecked launch into ``out``. sa/sb/bias are read as contiguous vectors (or [K/128, M] /
    [N/128, K/128] with the given row strides in block mode). ``fresh``: A and out were just allocated
    by us, so only their shapes decide TMA alignment. None when M == 0."""
    m, k = a.shape
    n = w.shape[0]
    if m == 0:
        return None
    sm, num_sms, _ = device_info(a.device)
    pdl = pdl_enabled(a.device)
    bias_arg = sb if bias is None else bias

    def launch(cfg: TileConfig, warmup: bool = False):
        # The Gluon kernel waits for the quantizer only where that pays (GLUON_PDL_MAX_K).
        use_pdl = pdl and (not cfg.gluon or k <= GLUON_PDL_MAX_K)
        meta = _w8a8_meta(
            cfg, bias is not None, block_scaled, a.dtype == torch.int8, k % cfg.block_k == 0, num_sms, use_pdl
        )
        tiles = cdiv(m, cfg.block_m) * cdiv(n, cfg.block_n)
        if cfg.gluon:
            descs = gluon_gemm.descriptors(a, w, out, cfg.block_m, cfg.block_n, cfg.block_k)
            args = (*descs, sa, sb, bias_arg, m, n, k)
            return run_kernel(gluon_gemm.w8a8_gluon_kernel, (min(num_sms, tiles),), args, meta, warmup)
        if cfg.tma:
            a_desc = TensorDescriptor(a, a.shape, a.stride(), [cfg.block_m, cfg.block_k])
            b_desc = TensorDescriptor(w, w.shape, w.stride(), [cfg.block_n, cfg.block_k])
            c_desc = TensorDescriptor(
                out, out.shape, out.stride(), [cfg.block_m, cfg.block_n // (2 if cfg.subtile else 1)]
            )
            args = (a_desc, b_desc, c_desc, sa, sb, bias_arg, m, n, k, stride_sak, stride_sbn)
            return run_kernel(w8a8_tma_kernel, (min(num_sms, tiles),), args, meta, warmup)
        strides = (a.stride(0), w.stride(0), out.stride(0), stride_sak, stride_sbn)
        args = (a, w, out, sa, sb, bias_arg, m, n, k, *strides)
        return run_kernel(w8a8_kernel, (tiles,), args, meta, warmup)

    if config is None:
        kind = FP8_BLOCK if block_scaled else W8A8
        key, tma = _w8a8_key(kind, a, w, out, sm, fresh)
        config = TUNER.best.get(key) or _tuned(kind, key, a, out, 1, tma, launch)
    else:
        if block_scaled:
            _check(
                128 % config.block_k == 0, f"block-128 GEMM needs BLOCK_K dividing 128, got {config.block_k}"
            )
            _check(not config.gluon, "the Gluon W8A8 kernel has per-channel scales only, not block-128")
        if config.gluon:
            _check(
                gluon_gemm.AVAILABLE and sm == 90,
                f"Gluon tiles run on sm_90 (Hopper) with a Triton that has Gluon; this GPU is sm_{sm}",
            )
        if config.tma:
            _check(
                _tma_ok(a, w, out),
                "a TMA config needs 16-byte aligned rows of A, W and the output "
                f"(K % 16 == 0 and N * {out.element_size()} % 16 == 0); got K={k}, N={n}",
            )
    return launch(config)


def _w8a8_key(kind: str, a, w, out, sm: int, fresh: bool) -> tuple[tuple, bool]:
    """The tuner's key of a W8A8 GEMM, and whether its TMA tiles may run (16-byte aligned rows)."""
    m, k = a.shape
    n = w.shape[0]
    key = (kind, str(a.dtype), str(out.dtype), m_bucket(m), n, k)
    tma = sm >= 90 and k % 16 == 0 and (n * out.element_size()) % 16 == 0 and _tma_ok(w) and (fresh or _tma_ok(a, out))
    return (key + ("tma",) if tma else key), tma


def w8a8_matmul_add_(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """IN PLACE: residual += ((a * a_scale) @ (w * w_scale)^T + bias) * gate (without gate: + the product),
    the product rounded to residual's dtype first and the sum done in fp32, as ``fused.gated_residual_``
    does with the output of ``w8a8_matmul``. a [M, K], w [N, K] int8 / fp8; residual [M, N] bf16 / fp16 /
    fp32 with unit column stride; gate [N] fp32. Returns residual.

    On Hopper with Gluon, once the tuner has picked a Gluon tile for this GEMM (any earlier call of the
    same shape: the first one here goes the two-pass way, tuning it), the add runs in the GEMM's epilogue:
    the product never goes to memory and the residual is read and written once. Otherwise (or when the
    residual is fp32, or its tile would not fit) the GEMM writes a temporary that ``gated_residual_`` adds."""
    from lightx2v_quant.fused.residual import gated_residual_

    _check_w8a8_inputs(a, w, residual.dtype)
    m, n = a.shape[0], w.shape[0]
    _check(residual.dim() == 2 and tuple(residual.shape) == (m, n) and residual.stride(1) == 1,
           f"residual must be [{m}, {n}] with unit column stride, got {tuple(residual.shape)} {residual.stride()}")
    _check(gate is None or (gate.numel() == n and gate.dtype == torch.float32), f"gate must be {n} fp32 values")
    _check(a_scale.numel() == m and a_scale.dtype == torch.float32, f"a_scale must be {m} fp32 values")
    _check(w_scale.numel() == n and w_scale.dtype == torch.float32, f"w_scale must be {n} fp32 values")
    _check(bias is None or bias.numel() == n, f"bias must have {n} values")
    sa, sb = a_scale.reshape(m).contiguous(), w_scale.reshape(n).contiguous()
    bias = None if bias is None else bias.reshape(n).contiguous()
    gate = None if gate is None else gate.reshape(n).contiguous()
    if m == 0:
        return residual
    cfg = None
    if a.is_cuda and residual.dtype != torch.float32 and gluon_gemm.AVAILABLE:
        sm, num_sms, _ = device_info(a.device)
        key, tma = _w8a8_key(W8A8, a, w, residual, sm, False)
        cfg = TUNER.best.get(key) if tma and residual.stride(0) * m < 2**31 else None
    if cfg is None or not cfg.gluon:
        y = torch.empty((m, n), dtype=residual.dtype, device=a.device)
        launch_w8a8(a, w, sa, sb, bias, y, 0, 0, False, None, False)
        gated_residual_(residual[None], y[None], None if gate is None else gate.view(1, 1, n))
        return residual
    meta = dict(
        GROUP_M=cfg.group_m,
        STAGES=cfg.num_stages,
        INSTR_N=gluon_gemm.instr_n(cfg.block_n, a.dtype == torch.int8),
        HAS_BIAS=bias is not None,
        IS_INT8=a.dtype == torch.int8,
        HAS_GATE=gate is not None,
        num_warps=cfg.num_warps,
    )
    descs = gluon_gemm.descriptors(a, w, residual, cfg.block_m, cfg.block_n, cfg.block_k)
    args = (*descs, sa, sb, sb if bias is None else bias, residual, sb if gate is None else gate, m, n,
            a.shape[1], residual.stride(0))  # fmt: skip
    tiles = cdiv(m, cfg.block_m) * cdiv(n, cfg.block_n)
    run_kernel(gluon_gemm.w8a8_gluon_add_kernel, (min(num_sms, tiles),), args, meta, False)
    return residual


def _check_w8a8_inputs(a: torch.Tensor, w: torch.Tensor, out_dtype: torch.dtype) -> None:
    _check(
        a.dim() == 2 and w.dim() == 2,
        f"expected A [M, K] and W [N, K], got {tuple(a.shape)} and {tuple(w.shape)}",
    )
    _check(a.shape[1] == w.shape[1], f"K mismatch: A is {tuple(a.shape)}, W is {tuple(w.shape)}")
    _check(
        a.dtype == w.dtype and a.dtype in (torch.int8, qf.FP8_DTYPE),
        f"A and W must both be int8 or both float8_e4m3fn, got {a.dtype} and {w.dtype}",
    )
    _check(a.stride(1) == 1 and w.stride(1) == 1, "A and W need unit stride along K (row-major, as stored)")
    _check(out_dtype in _OUT_DTYPES, f"output dtype must be one of {_OUT_DTYPES}, got {out_dtype}")


def w8a8_matmul(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    *,
    config: TileConfig | None = None,
) -> torch.Tensor:
    """(a * a_scale) @ (w * w_scale)^T + bias. a [M, K], w [N, K] int8 or fp8; a_scale [M] or [M, 1] fp32;
    w_scale [N] or [N, 1] fp32; bias [N] (any float dtype) -> [M, N] in ``out_dtype``."""
    _check_w8a8_inputs(a, w, out_dtype)
    m, n = a.shape[0], w.shape[0]
    _check(a_scale.numel() == m and a_scale.dtype == torch.float32, f"a_scale must be {m} fp32 values")
    _check(w_scale.numel() == n and w_scale.dtype == torch.float32, f"w_scale must be {n} fp32 values")
    _check(bias is None or bias.numel() == n, f"bias must have {n} values")
    out = torch.empty((m, n), dtype=out_dtype, device=a.device)
    sa = a_scale.reshape(m).contiguous()
    sb = w_scale.reshape(n).contiguous()
    bias = None if bias is None else bias.reshape(n).contiguous()
    launch_w8a8(a, w, sa, sb, bias, out, 0, 0, False, config, False)
    return out


def fp8_block_matmul(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    *,
    config: TileConfig | None = None,
) -> torch.Tensor:
    """Block-scaled fp8: a [M, K] with a_scale [M, K/128] (per token-group), w [N, K] with w_scale
    [ceil(N/128), K/128]. An M-major a_scale (as ``quantize_per_token_group`` returns) is used in place."""
    _check_w8a8_inputs(a, w, out_dtype)
    _check(a.dtype == qf.FP8_DTYPE, "fp8-block128 needs float8_e4m3fn A and W")
    (m, k), n = a.shape, w.shape[0]
    g = qf.GROUP
    _check(k % g == 0, f"fp8-block128 needs K % {g} == 0, got K={k}")
    _check(
        tuple(a_scale.shape) == (m, k // g) and a_scale.dtype == torch.float32,
        f"a_scale must be fp32 [{m}, {k // g}], got {a_scale.dtype} {tuple(a_scale.shape)}",
    )
    nb = cdiv(n, g)
    _check(
        tuple(w_scale.shape) == (nb, k // g) and w_scale.dtype == torch.float32,
        f"w_scale must be fp32 [{nb}, {k // g}], got {w_scale.dtype} {tuple(w_scale.shape)}",
    )
    _check(bias is None or bias.numel() == n, f"bias must have {n} values")
    sa_t = a_scale.t()
    if sa_t.stride(1) != 1:
        sa_t = sa_t.contiguous()  # [K/128, M]
    sb = w_scale if w_scale.stride(1) == 1 else w_scale.contiguous()
    out = torch.empty((m, n), dtype=out_dtype, device=a.device)
    bias = None if bias is None else bias.reshape(n).contiguous()
    launch_w8a8(a, w, sa_t, sb, bias, out, sa_t.stride(0), sb.stride(0), True, config, False)
    return out


# -- W4A16 -----------------------------------------------------------------------------------------
def w4a16_matmul(
    x: torch.Tensor,
    w_packed: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    *,
    config: TileConfig | None = None,
) -> torch.Tensor:
    """x [M, K] bf16/fp16/fp32 @ dequant(w_packed uint8 [N, K/2], w_scale fp32 [N, K/128])^T + bias."""
    _check(x.dim() == 2 and w_packed.dim() == 2, "expected x [M, K] and packed W [N, K/2]")
    k, n = x.shape[1], w_packed.shape[0]
    out_dtype = out_dtype or x.dtype
    _check(x.dtype in _OUT_DTYPES, f"int4-g128 activations must be bf16, fp16 or fp32, got {x.dtype}")
    _check(k % qf.GROUP == 0, f"int4-g128 needs K % {qf.GROUP} == 0, got K={k}")
    _check(
        w_packed.dtype == torch.uint8 and w_packed.shape[1] * 2 == k,
        f"packed W must be uint8 [{n}, {k // 2}], got {w_packed.dtype} {tuple(w_packed.shape)}",
    )
    _check(
        tuple(w_scale.shape) == (n, k // qf.GROUP) and w_scale.dtype == torch.float32,
        f"w_scale must be fp32 [{n}, {k // qf.GROUP}], got {w_scale.dtype} {tuple(w_scale.shape)}",
    )
    _check(bias is None or bias.numel() == n, f"bias must have {n} values")
    _check(out_dtype in _OUT_DTYPES, f"output dtype must be one of {_OUT_DTYPES}, got {out_dtype}")
    if config is not None and not config.gluon:
        _check(
            128 % config.block_k == 0 and not config.tma,
            f"W4A16 needs a pointer config with BLOCK_K | 128: {config}",
        )
    x = x if x.stride(1) == 1 else x.contiguous()
    w_packed = w_packed if w_packed.stride(1) == 1 else w_packed.contiguous()
    w_scale = w_scale if w_scale.stride(1) == 1 else w_scale.contiguous()
    bias = None if bias is None else bias.reshape(n).contiguous()
    out = torch.empty((x.shape[0], n), dtype=out_dtype, device=x.device)
    if config is not None and config.gluon:
        _check(
            _gluon_w4a16_ok(x, w_packed, out) and config.block_k <= 64 and config.block_m <= 256,
            "the Gluon W4A16 kernel runs on sm_90 (Hopper) with bf16/fp16 x, 16-byte aligned rows of x, W and "
            f"the output, BLOCK_K <= 64 and up to 256 tokens: {config}",
        )
    launch_w4a16(x, w_packed, w_scale, bias, out, config)
    return out


def _gluon_w4a16_ok(x, w_packed, out) -> bool:
    """The Gluon W4A16 kernel can take this GEMM: a Hopper GPU, its dtypes, TMA-aligned tensors."""
    return (
        x.is_cuda
        and device_info(x.device)[0] == 90
        and gluon_w4a16.supports(x.dtype, out.dtype)
        and _tma_ok(x, w_packed, out)
    )


def launch_w4a16(x, w_packed, w_scale, bias, out, config) -> Launched | None:
    """Unchecked launch into ``out``; rows of x, W and the scales have unit stride. None when M == 0."""
    (m, k), n = x.shape, w_packed.shape[0]
    if m == 0:
        return None
    bias_arg = w_scale if bias is None else bias
    precision = "ieee" if x.dtype == torch.float32 else "tf32"  # tf32 is ignored for 16-bit operands

    def launch(cfg: TileConfig, warmup: bool = False):
        if cfg.gluon:
            meta_key = (cfg, bias is not None, "gluon-w4a16")
            meta = _META.get(meta_key) or _META.setdefault(meta_key, gluon_w4a16.meta(cfg, bias is not None))
            grid, args = gluon_w4a16.grid_and_args(x, w_packed, w_scale, bias, out, cfg, device_info(x.device)[1])
            return run_kernel(gluon_w4a16.w4a16_gluon_kernel, grid, args, meta, warmup)
        grid = (cdiv(m, cfg.block_m) * cdiv(n, cfg.block_n),)
        args = (
            x,
            w_packed,
            w_scale,
            bias_arg,
            out,
            m,
            n,
            k,
            x.stride(0),
            w_packed.stride(0),
            w_scale.stride(0),
            out.stride(0),
        )
        meta_key = (cfg, bias is not None, precision)
        meta = _META.get(meta_key)
        if meta is None:
            meta = _META[meta_key] = dict(
                BLOCK_M=cfg.block_m,
                BLOCK_N=cfg.block_n,
                BLOCK_K=cfg.block_k,
                GROUP_M=cfg.group_m,
                HAS_BIAS=bias is not None,
                PRECISION=precision,
                SWAP_AB=cfg.swap_ab,
                num_warps=cfg.num_warps,
                num_stages=cfg.num_stages,
            )
        return run_kernel(w4a16_kernel, grid, args, meta, warmup)

    if config is None:
        key = (W4A16, str(x.dtype), str(out.dtype), m_bucket(m), n, k)
        tma = _gluon_w4a16_ok(x, w_packed, out)  # the Gluon tiles may run
        key = key + ("tma",) if tma else key
        config = TUNER.best.get(key) or _tuned(W4A16, key, x, out, x.element_size(), tma, launch)
    return launch(config)

