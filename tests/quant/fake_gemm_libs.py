"""CPU stand-ins for the external GEMM libraries, built from their documented contracts (tests only).

Each stand-in checks what the real library checks (layouts, strides, dtypes, scale shapes, argument
order) and computes the result from the quantized operands in fp32, so an adapter that calls a library
the wrong way fails here on CPU, before any GPU time. They say nothing about speed, and a stand-in
cannot prove the real library's internal layout (Marlin's packing is checked for self-consistency;
the real op is checked on the GPU).

- ``FakeVllmOps``: vLLM 0.33's ``torch.ops._C`` schemas (quantizers, cutlass_scaled_mm, Marlin).
- ``fake_sgl_kernel()``, ``fake_q8_kernels()``, ``fake_deep_gemm()``: modules for ``sys.modules``.
"""

from __future__ import annotations

import types

import torch

from lightx2v_quant.quant import formats as qf

UINT4B8_ID = 1125899907892224  # vllm 0.33.0 scalar_types.uint4b8.id
GROUPED = [i + 8 * j for i in range(8) for j in range(8)]  # vLLM marlin_utils.get_scale_perms()
SINGLE = [2 * i + j for i in range(4) for j in (0, 1, 8, 9, 16, 17, 24, 25)]

SCHEMAS = {  # copied from the schema strings in vLLM 0.33.0's _C_stable_libtorch.abi3.so
    "dynamic_per_token_scaled_fp8_quant": (
        "(Tensor! result, Tensor input, Tensor! scale, Tensor? scale_ub) -> ()"
    ),
    "dynamic_scaled_int8_quant": "(Tensor! result, Tensor input, Tensor! scale, Tensor!? azp) -> ()",
    "per_token_group_fp8_quant": (
        "(Tensor input, Tensor! output_q, Tensor! output_s, int group_size, float eps, float fp8_min, "
        "float fp8_max, bool scale_ue8m0, bool dummy_is_scale_transposed, bool dummy_is_tma_aligned) -> ()"
    ),
    "cutlass_scaled_mm": (
        "(Tensor! out, Tensor a, Tensor b, Tensor a_scales, Tensor b_scales, Tensor? bias) -> ()"
    ),
    "cutlass_scaled_mm_supports_fp8": "(int cuda_device_capability) -> bool",
    "gptq_marlin_repack": (
        "(Tensor b_q_weight, SymInt size_k, SymInt size_n, int num_bits, bool is_a_8bit) -> Tensor"
    ),
    "marlin_gemm": (
        "(Tensor a, Tensor? c_or_none, Tensor b_q_weight, Tensor? b_bias_or_none, Tensor b_scales, "
        "Tensor? a_scales, Tensor? global_scale, Tensor? b_zeros_or_none, Tensor workspace, int b_type_id, "
        "SymInt size_m, SymInt size_n, SymInt size_k, bool use_atomic_add, bool use_fp32_reduce, "
        "bool is_zp_float) -> Tensor"
    ),
}


def _unpermute(rows: torch.Tensor, perm: list[int]) -> torch.Tensor:
    inverse = torch.argsort(torch.tensor(perm))
    return rows.reshape(-1, len(perm))[:, inverse].reshape(rows.shape)


# -- vLLM ops ---------------------------------------------------------------------------------------
def _fp8_quant(result, x, scale, scale_ub):
    assert x.stride(-1) == 1 and result.is_contiguous() and scale.dtype == torch.float32
    q, s = qf.FORMATS["w8a8-fp8-channel"].quantize_activation(x)
    result.copy_(q)
    scale.copy_(s)


def _int8_quant(result, x, scale, azp):
    assert x.is_contiguous() and azp is None and scale.shape == (x.shape[0], 1)
    q, s = qf.FORMATS["w8a8-int8-channel"].quantize_activation(x)
    result.copy_(q)
    scale.copy_(s)


def _group_quant(x, q_out, s_out, group, eps, fp8_min, fp8_max, ue8m0, col_major, tma_aligned):
    assert x.is_contiguous() and group == qf.GROUP and not ue8m0 and fp8_max == -fp8_min == qf.FP8_MAX
    if col_major and tma_aligned:
        assert s_out.stride(0) == 1 and s_out.stride(1) == -(-x.shape[0] // 4) * 4
    q, s = qf.FORMATS["w8a8-fp8-block128"].quantize_activation(x)
    q_out.copy_(q)
    s_out.copy_(s)  # copy_ honours s_out's strides


def _cutlass_scaled_mm(out, a, b, a_scales, b_scales, bias):
    m, k = a.shape
    n = b.shape[1]
    assert a.stride(1) == 1, "a must be row-major"
    assert b.stride(0) == 1, "b must be column-major"  # vLLM's error message is empty here
    assert out.stride(0) % 16 == 0 and b.stride(1) % 16 == 0
    assert out.dtype in (torch.bfloat16, torch.float16) and out.shape == (m, n)
    for s, rows in ((a_scales, m), (b_scales, n)):
        assert s.dtype == torch.float32 and s.is_contiguous() and s.numel() in (1, rows)
    assert bias is None or (bias.numel() == n and bias.dtype == out.dtype)
    y = (a.float() * a_scales.reshape(-1, 1)) @ (b.float() * b_scales.reshape(1, -1))
    if bias is not None:
        y = y + bias.float()
    out.copy_(y)


def _marlin_repack(w, size_k, size_n, num_bits, is_a_8bit):
    assert w.dtype == torch.int32 and w.is_contiguous() and w.shape == (size_k // 8, size_n)
    assert num_bits == 4 and not is_a_8bit
    return w.reshape(size_k // 16, size_n * 2).clone()  # a stand-in layout with the real shape


def _marlin_gemm(
    a,
    c,
    w,
    bias,
    scales,
    a_scales,
    global_scale,
    zeros,
    workspace,
    type_id,
    m,
    n,
    k,
    use_atomic_add,
    use_fp32_reduce,
    is_zp_float,
):
    assert type_id == UINT4B8_ID and c is None and a_scales is None and global_scale is None and zeros is None
    assert a.dtype in (torch.bfloat16, torch.float16) and a.shape == (m, k) and a.stride(1) == 1
    assert scales.dtype == a.dtype and scales.is_contiguous() and scales.shape == (k // qf.GROUP, n)
    assert workspace.dtype == torch.int32 and w.shape == (k // 16, n * 2)
    assert bias is None or (bias.dtype == a.dtype and bias.shape == (n,) and bias.is_contiguous())
    packed = w.reshape(k // 8, n).to(torch.int64) & 0xFFFFFFFF
    q = torch.stack([(packed >> (4 * j)) & 0xF for j in range(8)], dim=1).reshape(k, n) - 8  # [K, N]
    s = _unpermute(scales, GROUPED if scales.shape[0] > 1 else SINGLE).float()
    weight = q.float() * s.repeat_interleave(qf.GROUP, 0)
    y = a.float() @ weight
    if bias is not None:
        y = y + _unpermute(bias, SINGLE).float()
    return y.to(a.dtype)


class FakeVllmOps:
    """Registers the stand-ins under torch.ops._C for the duration of a ``with`` block."""

    IMPLS = {
        "dynamic_per_token_scaled_fp8_quant": _fp8_quant,
        "dynamic_scaled_int8_quant": _int8_quant,
        "per_token_group_fp8_quant": _group_quant,
        "cutlass_scaled_mm": _cutlass_scaled_mm,
        "cutlass_scaled_mm_supports_fp8": lambda cap: cap >= 89,
        "gptq_marlin_repack": _marlin_repack,
        "marlin_gemm": _marlin_gemm,
    }

    def __enter__(self) -> FakeVllmOps:
        self.lib = torch.library.Library("_C", "FRAGMENT")
        for name, schema in SCHEMAS.items():
            self.lib.define(name + schema)
            self.lib.impl(name, self.IMPLS[name], "CompositeExplicitAutograd")
        return self

    def __exit__(self, *exc) -> None:
        self.lib._destroy()


# -- sgl-kernel ---------------------------------------------------------------------------------------
def fake_sgl_kernel() -> types.ModuleType:
    mod = types.ModuleType("sgl_kernel")

    def scaled_mm(qdtype):
        def run(mat_a, mat_b, scales_a, scales_b, out_dtype, bias=None):
            assert mat_a.dtype == mat_b.dtype == qdtype
            assert mat_a.stride(1) == 1, "mat_a must be a row major tensor"
            assert mat_b.stride(0) == 1, "mat_b must be a column major tensor"
            assert out_dtype in (torch.bfloat16, torch.float16)
            assert scales_a.numel() == mat_a.shape[0] and scales_b.numel() == mat_b.shape[1]
            assert scales_a.is_contiguous() and scales_b.is_contiguous()
            assert scales_a.dtype == scales_b.dtype == torch.float32
            assert bias is None or (bias.numel() == mat_b.shape[1] and bias.dtype == out_dtype)
            out = torch.empty(mat_a.shape[0], mat_b.shape[1], dtype=out_dtype)
            _cutlass_scaled_mm(out, mat_a, mat_b, scales_a, scales_b, bias)
            return out

        return run

    def per_token_quant_fp8(x, q_out, s_out):
        assert s_out.shape == (x.shape[0], 1) and s_out.dtype == torch.float32
        _fp8_quant(q_out, x, s_out, None)

    mod.fp8_scaled_mm = scaled_mm(qf.FP8_DTYPE)
    mod.int8_scaled_mm = scaled_mm(torch.int8)
    mod.sgl_per_token_quant_fp8 = per_token_quant_fp8
    return mod


# -- Q8-Kernels ---------------------------------------------------------------------------------------
def fake_q8_kernels() -> dict[str, types.ModuleType]:
    def linear(qdtype):
        def run(a, b, bias=None, scale_a=None, scale_b=None, *, out_dtype=None, **flags):
            assert flags in ({"use_hadamard": False}, {"fuse_gelu": False})
            assert a.dtype == b.dtype == qdtype and a.is_contiguous() and b.is_contiguous()
            assert a.shape[-1] == b.shape[-1], "b is [N, K], not transposed"
            assert bias is None or bias.dtype == torch.float32, "bias must be in fp32"
            assert out_dtype in (torch.bfloat16,), "Q8-Kernels writes bf16 (or fp8, its default)"
            assert scale_a.dim() == scale_b.dim() == 1 and scale_a.dtype == scale_b.dtype == torch.float32
            y = (a.float() * scale_a[:, None]) @ (b.float() * scale_b[:, None]).t()
            if bias is not None:
                y = y + bias
            return y.to(out_dtype).unsqueeze(0)  # [1, M, N], as the library returns

        return run

    root, functional, lin = (
        types.ModuleType(n) for n in ("q8_kernels", "q8_kernels.functional", "q8_kernels.functional.linear")
    )
    lin.fp8_linear = linear(qf.FP8_DTYPE)
    lin.q8_linear = linear(torch.int8)
    root.functional, functional.linear = functional, lin
    return {"q8_kernels": root, "q8_kernels.functional": functional, "q8_kernels.functional.linear": lin}


# -- DeepGEMM -----------------------------------------------------------------------------------------
def fake_deep_gemm() -> types.ModuleType:
    mod = types.ModuleType("deep_gemm")

    def fp8_gemm_nt(a_pair, b_pair, d, c=None, recipe=None, compiled_dims="nk", disable_ue8m0_cast=False):
        (a, sfa), (b, sfb) = a_pair, b_pair
        m, k = a.shape
        n = b.shape[0]
        assert a.dtype == b.dtype == qf.FP8_DTYPE and b.is_contiguous() and b.shape[1] == k
        assert d.dtype == torch.bfloat16 and d.shape == (m, n) and c is None and disable_ue8m0_cast
        assert sfa.shape == (m, k // 128) and sfa.dtype == torch.float32 and sfa.stride(0) == 1
        assert sfb.shape == (-(-n // 128), k // 128) and sfb.dtype == torch.float32
        xa = qf.FORMATS["w8a8-fp8-block128"].dequantize_activation(a, sfa)
        wb = qf.FORMATS["w8a8-fp8-block128"].dequantize_weight({"weight": b, "weight_scale": sfb})
        d.copy_(xa @ wb.t())

    def transform_sf_into_required_layout(
        sf, mn, k, recipe, num_groups=None, is_sfa=None, disable_ue8m0_cast=False
    ):
        assert tuple(recipe) == (1, 128, 128) and not is_sfa and num_groups == sf.shape[0] == 1
        assert sf.shape[1:] == (-(-mn // 128), -(-k // 128))
        return sf

    def get_mn_major_tma_aligned_tensor(sf):
        m, g = sf.shape
        out = torch.empty_strided((m, g), (1, -(-m // 4) * 4), dtype=sf.dtype)
        out.copy_(sf)
        return out

    mod.fp8_gemm_nt = fp8_gemm_nt
    mod.transform_sf_into_required_layout = transform_sf_into_required_layout
    mod.get_mn_major_tma_aligned_tensor = get_mn_major_tma_aligned_tensor
    return mod
