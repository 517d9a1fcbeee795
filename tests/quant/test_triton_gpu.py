"""The `triton` kernel's compiled kernels on a GPU (every test marked `gpu`), at Wan's sizes.

What each test holds the kernels to, and why that bound:
- quantizers: bit-identical to the CPU reference, for every launch shape the tuner may pick;
- int8 GEMM with fp32 output: 1e-6 relative (int32 accumulation is exact; the fp32 epilogue rounds
  three or four times, ~2.4e-7);
- fp8 GEMMs: Hopper's fp8 tensor cores add products with limited precision, so the bound is relative to
  cuBLAS doing the same accumulation (``torch._scaled_mm`` with fast accumulation over the same K
  blocks): at most twice its error, plus 1e-4 (1e-2 where ``_scaled_mm`` cannot give fp32 output);
- W4A16: the kernel rounds each scaled weight to the activation dtype once, then accumulates in fp32:
  within 2e-5 of exactly that, and within 2.5e-3 (bf16) / 3.5e-4 (fp16) of the reference (measured
  rounding effect 1.65e-3 / 2.1e-4);
- outputs in bf16 add their own rounding (~1.7e-3 relative in norm).
Outputs are poisoned (NaN-filled allocations), so an element no program wrote fails the test.
"""

from __future__ import annotations

import pytest
import torch

from lightx2v_quant.quant import formats as qf

FP8, INT8, INT4, B128 = "w8a8-fp8-channel", "w8a8-int8-channel", "w4a16-int4-g128", "w8a8-fp8-block128"
BF16_OUT = 2.5e-3  # added to a bound when the output is bf16
pytestmark = pytest.mark.gpu


@pytest.fixture
def poison():
    """torch.empty returns NaN-filled (int: max) memory, so an output element no program wrote shows up."""
    old = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.utils.deterministic.fill_uninitialized_memory,
    )
    torch.use_deterministic_algorithms(True, warn_only=True)  # warn only: the fp64 reference uses cuBLAS
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(old[0], warn_only=old[1])
    torch.utils.deterministic.fill_uninitialized_memory = old[2]


@pytest.fixture
def first_candidate(monkeypatch):
    """No timing: each candidate list's first config (faster; the tuning tests cover the rest)."""
    monkeypatch.setenv("LIGHTX2V_QUANT_TRITON_AUTOTUNE", "0")


def _ops():
    pytest.importorskip("triton")
    from lightx2v_quant.quant.kernels import triton_ops

    return triton_ops


def _linear():
    pytest.importorskip("triton")
    from lightx2v_quant.quant.kernels import triton_linear

    return triton_linear


def _need_sm(sm: int) -> None:
    major, minor = torch.cuda.get_device_capability()
    if major * 10 + minor < sm:
        pytest.skip(f"needs sm_{sm}+")


def _rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(y).all(), "non-finite output: an unwritten (poisoned) or overflowed element"
    y, ref = y.double(), ref.to(y.device).double()
    return ((y - ref).norm() / ref.norm()).item()


def assert_same_bits(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    """Element-wise bit equality, with a message that says how many and where."""
    assert got.shape == want.shape and got.dtype == want.dtype, (name, got.shape, want.shape, got.dtype)
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32}[got.element_size()]
    g, w = got.detach().cpu().contiguous().view(ints), want.detach().cpu().contiguous().view(ints)
    bad = g != w
    if bad.any():
        first = tuple(bad.nonzero()[0].tolist())
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {bad.numel()} elements differ; first at {first}: "
            f"got {got.cpu()[first].item()!r} (bits {int(g[first])}), want {want.cpu()[first].item()!r} "
            f"(bits {int(w[first])})"
        )


def activations(m: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    """Rows of very different magnitudes, outliers, an all-zero row and some signed zeros."""
    x = torch.randn(m, k) * torch.logspace(-3, 2, m).unsqueeze(1)
    x[0, : min(k, 5)] *= 50
    if m > 2:
        x[m // 2] = 0.0
    x[-1, ::11] = -0.0
    return x.to(dtype).cuda()


def problem(fmt_name: str, m: int, n: int, k: int, x_dtype=torch.bfloat16):
    """(format, weight tensors quantized by the CPU reference and moved to the GPU, x, bias)."""
    fmt = qf.FORMATS[fmt_name]
    tensors = {name: t.cuda() for name, t in fmt.quantize_weight(torch.randn(n, k) * 0.02).items()}
    x = (torch.randn(m, k) * torch.logspace(-2, 1, m).unsqueeze(1)).to(x_dtype).cuda()
    return fmt, tensors, x, torch.randn(n).to(x_dtype).cuda()


def quantized_inputs(fmt_name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's quantized activation (so GEMM tests see no quantizer of ours). References run on
    the GPU (fp64 matmuls of these sizes would take minutes on a CPU); test_formats checks that the
    reference gives the same bits there as on the CPU."""
    return qf.FORMATS[fmt_name].quantize_activation(x)


# -- quantizers: bit-exact ------------------------------------------------------------------------------
HALF_AND_FP32 = (torch.float16, torch.float32)
QUANT_CASES = [  # (m, k, dtype); bf16 runs every launch shape the tuner may pick, the others its default
    *[(m, k, torch.bfloat16) for m, k in [(1, 5120), (4096, 5120), (2048, 13824), (257, 1280), (512, 4096)]],
    *[(m, k, torch.bfloat16) for m, k in [(37, 20000), (33, 1000)]],
    *[(m, k, dt) for m, k in [(4096, 5120), (2048, 13824), (33, 1000)] for dt in HALF_AND_FP32],
]


def _quant_configs(k: int, dtype: torch.dtype) -> list:
    from lightx2v_quant.quant.kernels.triton_tuning import quant_candidates

    cands = quant_candidates(k, torch.empty((), dtype=dtype).element_size())
    return cands if dtype == torch.bfloat16 else cands[:1]


@pytest.fixture(scope="module")
def compiled_quantizers():
    """Compile every quantizer variant of QUANT_CASES up front, in parallel threads (as the tuner does):
    the tests then only run them."""
    T = _ops()
    from lightx2v_quant.quant.kernels.triton_quant import per_token_launch
    from lightx2v_quant.quant.kernels.triton_tuning import _precompile

    def launch(item, warmup=True):
        fmt_name, k, dtype, cfg = item
        x = torch.zeros(1, k, dtype=dtype, device="cuda")
        q = torch.empty(1, k, dtype=T.QUANT_PARAMS[fmt_name][0], device="cuda")
        s = torch.empty(1, 1, dtype=torch.float32, device="cuda")
        kernel, args, meta = per_token_launch(x, q, s, fmt_name, cfg.num_warps)
        return kernel.warmup(*args, grid=(1,), **meta)

    items = [
        (fmt_name, k, dtype, cfg)
        for fmt_name in (FP8, INT8)
        for _, k, dtype in QUANT_CASES
        for cfg in _quant_configs(k, dtype)
    ]
    _precompile(list(dict.fromkeys(items)), launch)


@pytest.mark.parametrize("fmt_name", [FP8, INT8])
@pytest.mark.parametrize("m,k,dtype", QUANT_CASES)
def test_gpu_quantize_per_token_bit_exact(fmt_name, m, k, dtype, poison, compiled_quantizers):
    _need_sm(89 if fmt_name == FP8 else 80)
    T = _ops()
    x = activations(m, k, dtype)
    q_ref, s_ref = qf.FORMATS[fmt_name].quantize_activation(x.cpu())
    for cfg in _quant_configs(k, dtype):
        q, s = T.quantize_per_token(x, fmt_name, config=cfg)
        assert_same_bits(f"{cfg.label()} scale", s, s_ref)
        assert_same_bits(f"{cfg.label()} q", q, q_ref)


@pytest.mark.parametrize("m,k", [(1, 5120), (4096, 5120), (333, 13824)])
def test_gpu_quantize_per_token_group_bit_exact(m, k, poison):
    _need_sm(89)
    T = _ops()
    x = activations(m, k, torch.bfloat16)
    q, s = T.quantize_per_token_group(x)
    q_ref, s_ref = qf.FORMATS[B128].quantize_activation(x.cpu())
    assert_same_bits("scale", s, s_ref)
    assert_same_bits("q", q, q_ref)


# -- GEMMs on the reference's quantized inputs -------------------------------------------------------------
# (M, N, K): DIT 14B qkvo / ffn-down at 4096 tokens, time embedding (M=1), time projection, T5, CLIP
GPU_SHAPES = [
    (4096, 5120, 5120),
    (4096, 5120, 13824),
    (1, 5120, 5120),
    (2, 30720, 5120),
    (512, 10240, 4096),
    (257, 5120, 1280),
]


def _fast_accum_fp8(q: torch.Tensor, w: torch.Tensor, blocks: list[slice]) -> list[torch.Tensor] | None:
    """fp32 products of fp8 q [M, K] and w [N, K] per K slice, by cuBLAS with fast accumulation; None
    (and a printed reason) where this PyTorch's ``_scaled_mm`` cannot give fp32 output."""
    try:
        return _scaled_mm_parts(q, w, blocks)
    except RuntimeError as exc:
        print(f"cuBLAS comparison unavailable ({str(exc).splitlines()[0]}): absolute bound only")
        return None


def _scaled_mm_parts(q: torch.Tensor, w: torch.Tensor, blocks: list[slice]) -> list[torch.Tensor]:
    m = q.shape[0]
    pad = -m % 16  # cuBLAS fp8 wants M % 16 == 0
    qp = torch.cat([q, torch.zeros(pad, q.shape[1], dtype=q.dtype, device=q.device)]) if pad else q
    one = torch.ones((), device=q.device)
    parts = []
    for ks in blocks:
        a, b = qp[:, ks].contiguous(), w[:, ks].contiguous()
        parts.append(torch._scaled_mm(a, b.t(), one, one, out_dtype=torch.float32, use_fast_accum=True)[:m])
    return parts


@pytest.mark.parametrize("fmt_name", [FP8, INT8])
@pytest.mark.parametrize("m,n,k", GPU_SHAPES)
def test_gpu_w8a8_gemm(fmt_name, m, n, k, poison, first_candidate):
    _need_sm(89 if fmt_name == FP8 else 80)
    T = _ops()
    fmt, t, x, bias = problem(fmt_name, m, n, k)
    q, s = quantized_inputs(fmt_name, x)
    ref = fmt.reference_linear(x, t, bias, torch.float32)
    err = _rel(T.w8a8_matmul(q, s, t["weight"], t["weight_scale"], bias, torch.float32), ref)
    if fmt_name == INT8:
        print(f"int8 {m}x{n}x{k} fp32-out rel err {err:.2e}")
        assert err < 1e-6
        return
    parts = _fast_accum_fp8(q, t["weight"], [slice(0, k)])
    err_cublas = None
    if parts is not None:
        cublas = parts[0].double() * s.double() * t["weight_scale"].double().reshape(1, -1) + bias.double()
        err_cublas = _rel(cublas, ref)
    print(f"fp8 {m}x{n}x{k} fp32-out rel err {err:.2e} (cuBLAS fast accumulation {err_cublas})")
    assert err < (1e-2 if err_cublas is None else min(2 * err_cublas + 1e-4, 1e-2))


@pytest.mark.parametrize("m,n,k", GPU_SHAPES)
def test_gpu_fp8_block_gemm(m, n, k, poison, first_candidate):
    _need_sm(89)
    T = _ops()
    fmt, t, x, bias = problem(B128, m, n, k)
    q, s = quantized_inputs(B128, x)
    ref = fmt.reference_linear(x, t, bias, torch.float32)
    err = _rel(T.fp8_block_matmul(q, s, t["weight"], t["weight_scale"], bias, torch.float32), ref)
    # the same promotion by cuBLAS: fp32 partial products of each 128-wide K block, scaled and summed
    blocks = [slice(kb * 128, (kb + 1) * 128) for kb in range(k // 128)]
    w_s = t["weight_scale"].double().repeat_interleave(128, 0)[:n]  # [N, K/128]
    parts = _fast_accum_fp8(q, t["weight"], blocks)
    err_cublas = None
    if parts is not None:
        emul = bias.double().expand(m, n).clone()
        for kb, part in enumerate(parts):
            emul += part.double() * s[:, kb : kb + 1].double() * w_s[:, kb].reshape(1, -1)
        err_cublas = _rel(emul, ref)
    print(f"fp8-block128 {m}x{n}x{k} fp32-out rel err {err:.2e} (cuBLAS per-block {err_cublas})")
    assert err < (1e-2 if err_cublas is None else min(2 * err_cublas + 1e-4, 1e-2))


@pytest.mark.parametrize("m,n,k", GPU_SHAPES)
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2.5e-3), (torch.float16, 3.5e-4)])
def test_gpu_w4a16_gemm(m, n, k, dtype, tol, poison, first_candidate):
    _need_sm(80)
    T = _ops()
    fmt, t, x, bias = problem(INT4, m, n, k, dtype)
    y = T.w4a16_matmul(x, t["weight"], t["weight_scale"], bias, torch.float32)
    w = fmt.dequantize_weight(t)
    exact = x.double() @ w.to(dtype).double().t() + bias.double()  # W rounded once, as the kernel does
    assert _rel(y, exact) < 2e-5
    assert _rel(y, fmt.reference_linear(x, t, bias, torch.float32)) < tol


# -- the Gluon W4A16 kernel (sm_90) ------------------------------------------------------------------------
@pytest.mark.parametrize("m,n,k", [(4133, 1088, 1024), (300, 5120, 5120), (16896, 640, 13824), (40, 256, 128)])
@pytest.mark.parametrize(
    "x_dtype,out_dtype,with_bias",
    [(torch.bfloat16, torch.float32, True), (torch.float16, torch.float16, False), (torch.bfloat16, torch.bfloat16, True)],
)
def test_gpu_gluon_w4a16(m, n, k, x_dtype, out_dtype, with_bias, poison):
    """Every Gluon W4A16 tile (and the tuner's route) against the exact product with W rounded once to
    the activation dtype, as the kernel unpacks it: edges in tokens and weight rows (TMA zero-fills and
    clips, the group scales are masked), K from one group of 128 up to 13824, with and without bias."""
    from lightx2v_quant.quant.kernels import gluon_w4a16
    from lightx2v_quant.quant.kernels.triton_tuning import TileConfig

    if torch.cuda.get_device_capability() != (9, 0) or not gluon_w4a16.AVAILABLE:
        pytest.skip("the Gluon W4A16 kernel needs sm_90 and a Triton with Gluon")
    T = _ops()
    fmt, t, x, bias = problem(INT4, m, n, k, x_dtype)
    bias = bias if with_bias else None
    w = fmt.dequantize_weight(t).to(x_dtype).double()
    exact = x.double() @ w.t() + (0 if bias is None else bias.double())
    tol = {torch.float32: 2e-5, torch.float16: 1e-3, torch.bfloat16: 5e-3}[out_dtype]
    for block_t, stages in [(256, 4), (128, 6), (64, 8)]:
        cfg = TileConfig(block_t, 128, 64, 4, stages, tma=True, gluon=True)
        y = T.w4a16_matmul(x, t["weight"], t["weight_scale"], bias, out_dtype, config=cfg)
        assert y.dtype == out_dtype
        err = _rel(y, exact)
        assert err < tol, f"{cfg.label()}: rel err {err:.2e}"
    assert _rel(T.w4a16_matmul(x, t["weight"], t["weight_scale"], bias, out_dtype), exact) < tol


# -- the Gluon W8A8 kernel (sm_90): same results as the tl TMA kernel ---------------------------------------
@pytest.mark.parametrize("fmt_name", [FP8, INT8])
@pytest.mark.parametrize("m,n,k", [(2048, 1088, 1040), (4133, 5120, 5120), (1500, 5120, 13824)])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_gpu_gluon_w8a8_matches_tma_kernel(fmt_name, m, n, k, out_dtype, poison):
    """Every Gluon tile against the tl persistent TMA kernel on the same quantized inputs: the same
    wgmma K order and the same epilogue order (acc * a_scale * w_scale + bias), so identical bits; edges
    in M, N and K (TMA zero-fills reads past them and clips writes) and a bias."""
    from lightx2v_quant.quant.kernels import gluon_gemm
    from lightx2v_quant.quant.kernels.triton_tuning import W8A8, TileConfig, candidates

    if torch.cuda.get_device_capability() != (9, 0) or not gluon_gemm.AVAILABLE:
        pytest.skip("Gluon wgmma tiles need sm_90 and a Triton with Gluon")
    T = _ops()
    fmt, t, x, bias = problem(fmt_name, m, n, k)
    q, s = quantized_inputs(fmt_name, x)
    args = (q, s, t["weight"], t["weight_scale"], bias, out_dtype)
    stages = 4 if out_dtype == torch.bfloat16 else 3  # fp32 staging leaves room for three
    want = T.w8a8_matmul(*args, config=TileConfig(128, 256, 128, 8, stages, tma=True, subtile=True))
    sm, _, smem = T.device_info(x.device)
    tiles = [c for c in candidates(W8A8, m, sm, smem, 1, out_dtype.itemsize) if c.gluon]
    assert tiles, "no Gluon candidate offered on sm_90"
    for cfg in tiles:
        assert_same_bits(cfg.label(), T.w8a8_matmul(*args, config=cfg), want)


@pytest.mark.parametrize("fmt_name", [FP8, INT8])
@pytest.mark.parametrize("m,n,k", [(2048, 1088, 1040), (4133, 5120, 5120), (1500, 5120, 13824)])
@pytest.mark.parametrize("gated,with_bias", [(True, True), (False, True), (True, False)])
def test_gpu_gluon_residual_epilogue_equals_separate_add(fmt_name, m, n, k, gated, with_bias, poison):
    """residual += GEMM * gate in the Gluon kernel's epilogue gives exactly the bits of the GEMM into a
    temporary followed by ``fused.gated_residual_`` (every Gluon tile; edges in M and N; the residual a
    row slice of a wider buffer, as a token chunk of the DIT's stream is)."""
    from lightx2v_quant.fused import gated_residual_
    from lightx2v_quant.quant.kernels import gluon_gemm
    from lightx2v_quant.quant.kernels import triton_ops as T
    from lightx2v_quant.quant.kernels.triton_tuning import TUNER, W8A8, candidates

    if torch.cuda.get_device_capability() != (9, 0) or not gluon_gemm.AVAILABLE:
        pytest.skip("Gluon wgmma tiles need sm_90 and a Triton with Gluon")
    fmt, t, x, bias = problem(fmt_name, m, n, k)
    bias = bias if with_bias else None
    q, s = quantized_inputs(fmt_name, x)
    g = torch.Generator("cuda").manual_seed(3)
    stream = torch.randn(m + 7, n, device="cuda", generator=g).to(torch.bfloat16)
    gate = torch.randn(n, device="cuda", generator=g) if gated else None
    sm, _, smem = T.device_info(x.device)
    tiles = [c for c in candidates(W8A8, m, sm, smem, 1, 2) if c.gluon]
    assert tiles, "no Gluon candidate offered on sm_90"
    for cfg in tiles:
        want = stream.clone()
        y = T.w8a8_matmul(q, s, t["weight"], t["weight_scale"], bias, torch.bfloat16, config=cfg)
        gated_residual_(want[3 : 3 + m][None], y[None], None if gate is None else gate.view(1, 1, n))
        got = stream.clone()
        key, tma = T._w8a8_key(W8A8, q, t["weight"], got[3 : 3 + m], sm, False)
        assert tma
        old = TUNER.best.get(key)
        TUNER.best[key] = cfg  # the tile the tuner would have picked
        try:
            T.w8a8_matmul_add_(q, s, t["weight"], t["weight_scale"], bias, got[3 : 3 + m], gate)
        finally:
            TUNER.best.pop(key) if old is None else TUNER.best.__setitem__(key, old)
        assert_same_bits(cfg.label(), got, want)  # rows outside the slice untouched too


# -- the fused linears (through QuantLinear: tuning, the small-M kernel, replays) ---------------------------
FUSED_SHAPES = [
    (257, 5120, 1280),
    (77, 1000, 1040),
    (1, 1536, 5120),
    (13, 520, 1040),
]  # CLIP, ragged, small M


def _fused_routes(m: int) -> list:
    from lightx2v_quant.quant.kernels import triton_fused as tf

    T = _ops()
    sm, _, smem = T.device_info(torch.device("cuda"))
    routes = tf.fused_candidates(m, sm, smem)
    assert routes, "no one-launch candidate for a small M"
    return routes


@pytest.mark.parametrize("fmt_name", [FP8, INT8])
@pytest.mark.parametrize("m,n,k", FUSED_SHAPES)
def test_gpu_fused_quant_gemm_equals_unfused(fmt_name, m, n, k, poison):
    """Every one-launch tile gives exactly the bits of quantizer + GEMM run with the same tile (same MMA
    instructions, same K order: fp8's reduced-precision accumulation then rounds identically); int8 also
    equals the tuned two-kernel route exactly (integer sums)."""
    _need_sm(89 if fmt_name == FP8 else 80)
    T, L = _ops(), _linear()
    from dataclasses import replace

    from lightx2v_quant.quant.kernels.triton_tuning import SPLIT

    fmt, t, x, bias = problem(fmt_name, m, n, k)
    w_scale = t["weight_scale"].reshape(-1).contiguous()
    q, s = T.quantize_per_token(x, fmt_name)
    tuned_split = torch.empty((m, n), dtype=torch.float32, device="cuda")
    L.launch_linear_w8a8(x, fmt_name, t["weight"], w_scale, bias, tuned_split, route=SPLIT)
    ref = fmt.reference_linear(x, t, bias, torch.float32)
    for route in _fused_routes(m):
        fused = torch.empty((m, n), dtype=torch.float32, device="cuda")
        assert len(L.launch_linear_w8a8(x, fmt_name, t["weight"], w_scale, bias, fused, route=route)) == 1
        same_tile = replace(route, fused=False)
        unfused = T.w8a8_matmul(q, s, t["weight"], w_scale, bias, torch.float32, config=same_tile)
        assert_same_bits(f"{route.label()} vs unfused {same_tile.label()}", fused, unfused)
        if fmt_name == INT8:
            assert_same_bits(f"{route.label()} vs tuned split", fused, tuned_split)
        else:  # another tile shape may use other MMA instructions (mma.sync vs wgmma)
            assert _rel(fused, tuned_split) < 2e-3 and _rel(fused, ref) < 1e-2, route.label()


@pytest.mark.parametrize("fmt_name", [FP8, INT8])
@pytest.mark.parametrize("m,n,k", FUSED_SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_fused_quantizes_exactly_as_the_reference(fmt_name, m, n, k, dtype, poison):
    """Through a weight with a single 1 per row (unit scales), each output is q[m, n % K] * scale[m] +
    bias[n], one nonzero product, exact whatever the MMA: the fused kernel's quantized activation and
    scales are the reference's bit for bit (signed zeros aside: the sum starts at +0)."""
    _need_sm(89 if fmt_name == FP8 else 80)
    L = _linear()
    fmt = qf.FORMATS[fmt_name]
    x = activations(m, k, dtype)
    cols = torch.arange(n) % k
    w = torch.zeros(n, k)
    w[torch.arange(n), cols] = 1.0
    w, w_scale = w.to(fmt.weight_dtype).cuda(), torch.ones(n, device="cuda")
    bias = torch.randn(n).to(dtype).cuda()
    q, s = fmt.quantize_activation(x.cpu())
    want = ((q.float()[:, cols] + 0.0) * s * 1.0 + bias.float().cpu()).cuda()
    for route in _fused_routes(m):
        fused = torch.empty((m, n), dtype=torch.float32, device="cuda")
        L.launch_linear_w8a8(x, fmt_name, w, w_scale, bias, fused, route=route)
        assert_same_bits(route.label(), fused, want)


LINEAR_SHAPES = [(4096, 5120, 5120), (512, 10240, 4096), (257, 5120, 1280), (1, 5120, 5120), (77, 1536, 5120)]
LINEAR_TOL = {"fp8-triton": 1e-2, "int8-triton": 1e-6, "int4-g128-triton": 2.5e-3, "fp8-b128-triton": 1e-2}


@pytest.mark.parametrize("scheme", list(LINEAR_TOL))
@pytest.mark.parametrize("m,n,k", LINEAR_SHAPES)
def test_gpu_quantlinear(scheme, m, n, k, poison, first_candidate):
    """QuantLinear -> TritonKernel -> triton_linear, twice: the second call replays the recorded
    launches (small and medium M) and must give the same bits."""
    from lightx2v_quant.quant.linear import QuantLinear

    _need_sm(89 if "fp8" in scheme else 80)
    _ops()
    linear = torch.nn.Linear(k, n, bias=True, device="cuda", dtype=torch.bfloat16)
    torch.nn.init.normal_(linear.weight, std=k**-0.5)
    layer = QuantLinear.from_linear(linear, scheme)
    x = (torch.randn(m, k, device="cuda") * torch.logspace(-2, 1, m, device="cuda").unsqueeze(1)).bfloat16()
    y1 = layer(x)
    y2 = layer(x)
    assert y1.dtype == torch.bfloat16 and y1.shape == (m, n)
    assert_same_bits("replayed call", y2, y1)
    if m <= 1024:
        assert len(layer.k_triton_plans) == 1, "small and medium M are replayed"
    tensors = {"weight": layer.weight, "weight_scale": layer.weight_scale}
    ref = layer.format.reference_linear(x, tensors, layer.bias, torch.float32)
    assert _rel(y1, ref) < LINEAR_TOL[scheme] + BF16_OUT


@pytest.mark.parametrize("scheme", ["fp8-triton", "int8-triton", "int4-g128-triton", "fp8-b128-triton"])
def test_gpu_replay_keys(scheme, poison, first_candidate):
    """A replay is only reused for the activation it was made for: other M, a misaligned view, another
    dtype each get their own launches, and all give the reference's result."""
    from lightx2v_quant.quant.linear import QuantLinear

    _need_sm(89 if "fp8" in scheme else 80)
    _ops()
    linear = torch.nn.Linear(1280, 640, bias=True, device="cuda", dtype=torch.bfloat16)
    layer = QuantLinear.from_linear(linear, scheme)
    tensors = {"weight": layer.weight, "weight_scale": layer.weight_scale}
    buf = torch.randn(300, 1288, device="cuda", dtype=torch.bfloat16)
    inputs = [buf[:257, :1280], buf[:64, :1280], buf[:257, 8:1288], buf[:257, 1:1281]]
    inputs.append(inputs[0].to(torch.float16))
    for x in inputs * 2:
        y = layer(x)
        ref = layer.format.reference_linear(x, tensors, layer.bias, torch.float32)
        tol = LINEAR_TOL[scheme] + (BF16_OUT if x.dtype == torch.bfloat16 else 1e-3)
        assert _rel(y, ref) < tol, (tuple(x.shape), x.stride(), x.dtype)
    assert len(layer.k_triton_plans) >= 4


@pytest.mark.parametrize("scheme", ["fp8-triton", "int8-triton", "int4-g128-triton", "fp8-b128-triton"])
@pytest.mark.parametrize("lead", [(1,), (2,), (2, 77)])
def test_gpu_quantlinear_small_m(scheme, lead, poison, first_candidate):
    """Time-embedding sized inputs (M = batch) through QuantLinear, 3-D inputs included."""
    from lightx2v_quant.quant.linear import QuantLinear

    _need_sm(89 if "fp8" in scheme else 80)
    _ops()
    linear = torch.nn.Linear(5120, 1536, bias=True, device="cuda", dtype=torch.bfloat16)
    layer = QuantLinear.from_linear(linear, scheme)
    x = torch.randn(*lead, 5120, device="cuda", dtype=torch.bfloat16)
    y = layer(x)
    tensors = {"weight": layer.weight, "weight_scale": layer.weight_scale}
    ref = layer.format.reference_linear(x, tensors, layer.bias, torch.float32)
    assert y.shape == (*lead, 1536) and y.dtype == torch.bfloat16
    assert _rel(y, ref) < LINEAR_TOL[scheme] + BF16_OUT


# -- tuning --------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fp8", "int8", "fp8-block128", "w4a16"])
def test_gpu_every_tuning_candidate(kind, poison):
    """Each config the tuner may pick computes the right thing (uneven N, K tails for W8A8, every
    quantizer launch shape and one-launch route)."""
    _need_sm(80 if kind in ("int8", "w4a16") else 89)
    T, L = _ops(), _linear()
    from triton.errors import TritonError

    from lightx2v_quant.quant.kernels import triton_tuning as tt

    sm, _, smem = T.device_info(torch.device("cuda"))
    fmt_name = {"fp8": FP8, "int8": INT8, "fp8-block128": B128, "w4a16": INT4}[kind]
    tuning_kind = {"fp8-block128": tt.FP8_BLOCK, "w4a16": tt.W4A16}.get(kind, tt.W8A8)
    n, k = 1088, 1024 if kind in ("fp8-block128", "w4a16") else 1040
    checked, failed = 0, []
    for m in (16, 300, 2048):
        fmt, t, x, bias = problem(fmt_name, m, n, k)
        ref = fmt.reference_linear(x, t, bias, torch.float32)
        a_bytes = 2 if kind == "w4a16" else 1
        runs = [(cfg, None) for cfg in tt.candidates(tuning_kind, m, sm, smem, a_bytes, 4)]
        if kind in ("fp8", "int8"):
            from lightx2v_quant.quant.kernels import triton_fused as tf

            fused = tf.fused_candidates(m, sm, smem) if m <= tf.FUSE_MAX_M else []
            runs += [(None, route) for route in [*fused, tt.SPLIT]]
        for cfg, route in runs:
            label = cfg.label() if cfg else route.label()
            try:
                if kind == "w4a16":
                    y = T.w4a16_matmul(x, t["weight"], t["weight_scale"], bias, torch.float32, config=cfg)
                elif kind == "fp8-block128":
                    q, s = T.quantize_per_token_group(x)
                    y = T.fp8_block_matmul(
                        q, s, t["weight"], t["weight_scale"], bias, torch.float32, config=cfg
                    )
                elif route is not None:
                    y = torch.empty((m, n), dtype=torch.float32, device="cuda")
                    w_scale = t["weight_scale"].reshape(-1).contiguous()
                    L.launch_linear_w8a8(x, fmt_name, t["weight"], w_scale, bias, y, route=route)
                else:
                    q, s = T.quantize_per_token(x, fmt_name)
                    y = T.w8a8_matmul(q, s, t["weight"], t["weight_scale"], bias, torch.float32, config=cfg)
            except TritonError as exc:  # does not build here: the tuner skips it the same way
                failed.append(f"{label}: {type(exc).__name__}")
                continue
            tol = {"int8": 1e-6, "fp8": 1e-2, "fp8-block128": 1e-2, "w4a16": 2.5e-3}[kind]
            err = _rel(y, ref)
            assert err < tol, f"{kind} m={m} {label}: rel err {err:.2e}"
            checked += 1
    print(f"{kind}: {checked} configs checked; not built here: {failed}")
    assert checked > 0


def test_gpu_tuner_records_its_choices(poison, tmp_path, monkeypatch):
    """A tuned linear records its route and its kernels' configs, and writes them to the tune file
    (M = 48: a size where both routes are candidates, so the route is tuned too)."""
    _need_sm(89)
    L = _linear()
    from lightx2v_quant.quant.kernels.triton_tuning import TUNER

    path = tmp_path / "tune.json"
    monkeypatch.setenv("LIGHTX2V_QUANT_TRITON_TUNE_FILE", str(path))
    monkeypatch.setattr(TUNER, "_saved", None)
    fmt, t, x, bias = problem(FP8, 48, 2048, 2048)
    y = torch.empty((48, 2048), dtype=torch.bfloat16, device="cuda")
    L.launch_linear_w8a8(x, FP8, t["weight"], t["weight_scale"].reshape(-1).contiguous(), bias, y)
    ref = fmt.reference_linear(x, t, bias, torch.float32)
    assert _rel(y, ref) < 1e-2 + BF16_OUT
    kinds = {key[0] for key in TUNER.records if 2048 in key}
    assert {"w8a8-linear", "quant"} <= kinds, kinds
    assert path.exists() and "w8a8-linear" in path.read_text()


@pytest.mark.parametrize("scheme", ["fp8-triton", "int8-triton"])
@pytest.mark.parametrize("m", [257, 512])
def test_gpu_gluon_medium_m_replays(scheme, m, monkeypatch, poison, first_candidate):
    """Medium M on the Gluon GEMM (its tile first in the list, no tuning): the second call replays the
    recorded launches, rebuilding the GEMM's TMA descriptors around the new tensors
    (``triton_launch.DescriptorReplay``), with the same bits; a fresh input of the same shape goes through
    the replay too and matches the reference."""
    from lightx2v_quant.quant.kernels import gluon_gemm, triton_launch
    from lightx2v_quant.quant.kernels import triton_tuning as tt
    from lightx2v_quant.quant.linear import QuantLinear

    _ops()
    if torch.cuda.get_device_capability() != (9, 0) or not gluon_gemm.AVAILABLE:
        pytest.skip("the Gluon GEMM runs on sm_90 with a Triton that has Gluon")
    gluon_tile = tt._g(64, 128, 128, 4, 6)
    monkeypatch.setitem(tt._SM90_W8A8, "medium", [gluon_tile, *tt._SM90_W8A8["medium"]])
    monkeypatch.setattr(tt.TUNER, "best", {})
    linear = torch.nn.Linear(1280, 5120, bias=True, device="cuda", dtype=torch.bfloat16)
    torch.nn.init.normal_(linear.weight, std=1280**-0.5)
    layer = QuantLinear.from_linear(linear, scheme)
    x = torch.randn(m, 1280, device="cuda").bfloat16()
    y1 = layer(x)
    (plan,) = layer.k_triton_plans.values()
    assert isinstance(plan.launches[1], triton_launch.DescriptorReplay)
    assert_same_bits("replayed call", layer(x), y1)
    x2 = torch.randn(m, 1280, device="cuda").bfloat16()
    tensors = {"weight": layer.weight, "weight_scale": layer.weight_scale}
    ref = layer.format.reference_linear(x2, tensors, layer.bias, torch.float32)
    assert _rel(layer(x2), ref) < LINEAR_TOL[scheme] + BF16_OUT


@pytest.mark.parametrize("m", [512, 4133])
def test_gpu_gluon_w4a16_layer_replays(m, monkeypatch, poison, first_candidate):
    """An int4-g128-triton layer on the Gluon W4A16 kernel (its tile first in the list, no tuning): the
    second call replays the recorded launch with descriptors rebuilt around the new tensors, in the
    kernel's argument order (x, W, scales, bias, out), with the same bits; a fresh input matches the
    exact product."""
    from lightx2v_quant.quant.kernels import gluon_w4a16, triton_launch
    from lightx2v_quant.quant.kernels import triton_tuning as tt
    from lightx2v_quant.quant.linear import QuantLinear

    _ops()
    if torch.cuda.get_device_capability() != (9, 0) or not gluon_w4a16.AVAILABLE:
        pytest.skip("the Gluon W4A16 kernel runs on sm_90 with a Triton that has Gluon")
    cls = tt.m_class(m)
    monkeypatch.setitem(tt._SM90_W4A16, cls, [tt._g(128, 128, 64, 4, 6), *tt._SM90_W4A16[cls]])
    monkeypatch.setattr(tt.TUNER, "best", {})
    linear = torch.nn.Linear(1024, 640, bias=True, device="cuda", dtype=torch.bfloat16)
    torch.nn.init.normal_(linear.weight, std=1024**-0.5)
    layer = QuantLinear.from_linear(linear, "int4-g128-triton")
    x = torch.randn(m, 1024, device="cuda").bfloat16()
    y1 = layer(x)
    (plan,) = layer.k_triton_plans.values()
    assert isinstance(plan.launches[0], triton_launch.DescriptorReplay)
    assert_same_bits("replayed call", layer(x), y1)
    x2 = torch.randn(m, 1024, device="cuda").bfloat16()
    w = layer.format.dequantize_weight({"weight": layer.weight, "weight_scale": layer.weight_scale})
    exact = x2.double() @ w.to(torch.bfloat16).double().t() + layer.bias.double()
    assert _rel(layer(x2), exact) < 5e-3
