"""The fused linears that ``TritonKernel.apply`` calls: quantize + GEMM, or the W4A16 GEMM.

The layer's tensors were checked when loaded and in ``TritonKernel.prepare`` (dtypes, shapes, unit
strides, contiguous [N] scale and bias), so these skip the validation of the public GEMM functions.

Small GEMMs (CLIP: M = 257, T5: M = 512) take a few microseconds on the GPU, less than the Python that
launches them through Triton's JIT. So the first call of a layer with a given activation shape goes the
ordinary way (tuning the configs if needed) and records a :class:`Plan`: the compiled kernels with their
grids and fixed arguments. Later calls with the same key allocate the outputs and replay the plan: two
direct launches (one for W4A16, and for W8A8 shapes where the size rule of ``triton_fused`` offers the
one-launch quantize+GEMM kernel and it won the tuning) and nothing else. Plans live on the layer
(``plans``, a dict that ``prepare`` resets) and hold no tensors, so moving or offloading the layer frees
its memory as usual. Launches of the ``tl`` TMA kernels (large M on Hopper) are not replayed: their CPU cost hides
behind milliseconds of GPU work there. The Gluon GEMM (medium and large M on Hopper) is, rebuilding its
descriptors per call (``triton_launch.DescriptorReplay``).
"""

from __future__ import annotations

import torch

from lightx2v_quant.quant.kernels import triton_launch
from lightx2v_quant.quant.kernels import triton_ops as ops
from lightx2v_quant.quant.kernels.triton_fused import (
    SWEEP_STAGES,
    fused_route_eligible,
    linear_candidates,
    route_mode,
    w8a8_quant_gemm_kernel,
)
from lightx2v_quant.quant.kernels.triton_quant import cdiv
from lightx2v_quant.quant.kernels.triton_tuning import LINEAR, SPLIT, TUNER, TileConfig, m_bucket

_OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
MAX_PLANS = 32  # per layer: distinct activation shapes seen (resolutions, batch sizes)


class Plan:
    """Replays for one (layer, activation shape): ``launches`` in order, and the dtype of the quantized
    activation they pass between them (None: a single launch)."""

    __slots__ = ("launches", "qdtype")

    def __init__(self, launches: list[triton_launch.Replay], qdtype: torch.dtype | None) -> None:
        self.launches = launches
        self.qdtype = qdtype


def _key(x: torch.Tensor) -> tuple:
    """What decides how Triton specialized the launches for x: shape, dtype, row stride, alignment,
    device (the layer's own tensors are fixed until ``prepare`` runs again)."""
    return (x.shape[0], x.dtype, x.stride(0), x.data_ptr() % 16 == 0, x.get_device())


def _remember(plans: dict | None, key: tuple, plan: Plan | None) -> None:
    if plans is None or plan is None or not triton_launch.enabled():
        return
    if len(plans) >= MAX_PLANS:
        plans.pop(next(iter(plans)))
    plans[key] = plan


def _replays(*launched: triton_launch.Launched | None, n_dynamic: tuple[int, ...]) -> list | None:
    out = []
    for rec, n in zip(launched, n_dynamic):
        replay = None if rec is None else rec.replay(n)
        if replay is None:
            return None
        out.append(replay)
    return out


def _check_x(x: torch.Tensor) -> torch.Tensor:
    if x.dtype not in _OUT_DTYPES:
        raise ValueError(f"activations must be bf16, fp16 or fp32, got {x.dtype}")
    return x if x.stride(1) == 1 else x.contiguous()


def launch_linear_w8a8(
    x: torch.Tensor,
    fmt_name: str,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    route: TileConfig | None = None,
) -> list[triton_launch.Launched]:
    """Unchecked: quantize x [M, K] per token and multiply by w [N, K] into ``out``, by ``route``:
    SPLIT (the quantizer, then the GEMM) or a fused tile config (one launch, ``triton_fused``); by
    default the route the size rule and the tuner pick for this shape. Returns what was launched, in
    order (M > 0)."""
    m, k = x.shape
    n = w.shape[0]
    qmax, is_int8 = ops.QUANT_PARAMS[fmt_name][1:]

    def launch(cfg: TileConfig, warmup: bool = False):
        if cfg == SPLIT:
            if warmup:
                return None
            q, s, lq = ops.launch_per_token(x, fmt_name)  # s [M, 1] contiguous: read as [M]
            return [lq, ops.launch_w8a8(q, w, s, w_scale, bias, out, 0, 0, False, None, True)]
        meta = dict(
            QMAX=qmax,
            IS_INT8=is_int8,
            BLOCK_M=cfg.block_m,
            BLOCK_N=cfg.block_n,
            BLOCK_K=cfg.block_k,
            GROUP_M=cfg.group_m,
            EVEN_K=k % cfg.block_k == 0,
            HAS_BIAS=bias is not None,
            SWEEP_STAGES=SWEEP_STAGES,
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
        )
        grid = (cdiv(m, cfg.block_m) * cdiv(n, cfg.block_n),)
        bias_arg = w_scale if bias is None else bias
        args = (x, w, out, w_scale, bias_arg, m, n, k, x.stride(0), w.stride(0), out.stride(0))
        launched = triton_launch.run_kernel(w8a8_quant_gemm_kernel, grid, args, meta, warmup)
        return launched if warmup else [launched]

    if route is None:
        # The rule (triton_fused.fused_route_eligible) decides which routes are candidates: the one-launch
        # tiles first where it holds (CLIP, M <= 64), quantizer + GEMM alone elsewhere (T5, the DIT); the
        # tuner times the candidates once per key and keeps the fastest (the first one without tuning,
        # and under the interpreter).
        # The key says which routes were candidates: shapes sharing an M bucket may differ in the rule.
        mode = route_mode()
        routes = mode if mode != "auto" else "fused+split" if fused_route_eligible(m, n, k) else "split"
        key = (LINEAR, fmt_name, str(x.dtype), str(out.dtype), m_bucket(m), n, k, routes)
        route = TUNER.best.get(key)
        if route is None:
            sm, _, max_smem = ops.device_info(x.device)
            cands = linear_candidates(m, n, k, sm, max_smem, mode)
            route = TUNER.choose(key, cands, launch, lambda: out.fill_(float("nan")))
    return launch(route)


def linear_w8a8(
    x: torch.Tensor,
    fmt_name: str,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    plans: dict | None = None,
) -> torch.Tensor:
    """Per-token quantization of x [M, K] and the W8A8 GEMM (two launches, or one for small M when the
    tuner found the fused kernel faster); output in x.dtype. w [N, K] int8/fp8 row-major, w_scale
    contiguous [N] fp32, bias contiguous [N] or None."""
    x = _check_x(x)
    (m, k), n = x.shape, w.shape[0]
    key = _key(x)
    plan = plans.get(key) if plans is not None else None
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if plan is not None:
        stream = triton_launch.current_stream(key[4])
        bias_arg = w_scale if bias is None else bias
        if plan.qdtype is None:  # fused
            plan.launches[0](stream, x, w, out, w_scale, bias_arg)
            return out
        q = torch.empty((m, k), dtype=plan.qdtype, device=x.device)
        s = torch.empty((m, 1), dtype=torch.float32, device=x.device)
        quant, gemm = plan.launches
        quant(stream, x, q, s)
        gemm(stream, q, w, out, s, w_scale, bias_arg)
        return out
    if m == 0:
        return out
    launched = launch_linear_w8a8(x, fmt_name, w, w_scale, bias, out)
    if triton_launch.aligned(w, w_scale, bias):
        if len(launched) == 1:
            replays = _replays(*launched, n_dynamic=(5,))
            _remember(plans, key, replays and Plan(replays, None))
        else:
            replays = _replays(*launched, n_dynamic=(3, 6))
            _remember(plans, key, replays and Plan(replays, ops.QUANT_PARAMS[fmt_name][0]))
    return out


def linear_fp8_block(
    x: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    plans: dict | None = None,
) -> torch.Tensor:
    """Per-token-group quantization of x, then the block-scaled fp8 GEMM. w_scale [N/128, K/128]
    contiguous."""
    x = _check_x(x)
    (m, k), n = x.shape, w.shape[0]
    key = _key(x)
    plan = plans.get(key) if plans is not None else None
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if plan is not None:
        q = torch.empty((m, k), dtype=plan.qdtype, device=x.device)
        s_t = torch.empty((k // 128, m), dtype=torch.float32, device=x.device)
        stream = triton_launch.current_stream(key[4])
        quant, gemm = plan.launches
        quant(stream, x, q, s_t)
        gemm(stream, q, w, out, s_t, w_scale, w_scale if bias is None else bias)
        return out
    if m == 0:
        return out
    q, s_t, lq = ops.launch_per_token_group(x)  # s_t: the M-major [K/128, M] scales
    lg = ops.launch_w8a8(q, w, s_t, w_scale, bias, out, s_t.stride(0), w_scale.stride(0), True, None, True)
    if triton_launch.aligned(w, w_scale, bias):
        replays = _replays(lq, lg, n_dynamic=(3, 6))
        _remember(plans, key, replays and Plan(replays, q.dtype))
    return out


def linear_w4a16(
    x: torch.Tensor,
    w_packed: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    plans: dict | None = None,
) -> torch.Tensor:
    """x [M, K] @ dequant(w_packed, w_scale)^T + bias in x.dtype."""
    x = _check_x(x)
    m, n = x.shape[0], w_packed.shape[0]
    key = _key(x)
    plan = plans.get(key) if plans is not None else None
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if plan is not None:
        plan.launches[0](
            triton_launch.current_stream(key[4]), x, w_packed, w_scale, w_scale if bias is None else bias, out
        )
        return out
    launched = ops.launch_w4a16(x, w_packed, w_scale, bias, out, None)
    if triton_launch.aligned(w_packed, w_scale, bias):
        replays = _replays(launched, n_dynamic=(5,))
        _remember(plans, key, replays and Plan(replays, None))
    return out
