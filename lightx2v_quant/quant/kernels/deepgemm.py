"""Kernel `deepgemm`: DeepGEMM's fp8 GEMM with 1x128 activation and 128x128 weight scales (Hopper).

Per call: fp8 quantization of x per token-group of 128 (scales fp32 [M, K/128]), laid out MN-major and
TMA-aligned as DeepGEMM reads them, then ``fp8_gemm_nt((x_q, sfa), (w, sfb), out)`` (DeepGEMM >= 2.0;
recipe (1, 128, 128) inferred from the scale shapes; ``disable_ue8m0_cast=True`` keeps our fp32 scales)
or the legacy ``gemm_fp8_fp8_bf16_nt((x_q, sfa), (w, sfb), out)`` that LightX2V calls, whichever the
installed package has. w is the [N, K] e4m3 weight as stored (K-major, no transpose); sfb the
[N/128, K/128] fp32 block scales (passed through DeepGEMM's ``transform_sf_into_required_layout`` in
``prepare`` when it has one); out bf16 [M, N]. DeepGEMM has no bias input on this path: the bias is added
after. Activation quantizer: vLLM's ``per_token_group_fp8_quant`` (writes the TMA-aligned layout
directly) when vLLM's ops are present, else our Triton group quantizer, else PyTorch ops followed by
DeepGEMM's ``get_mn_major_tma_aligned_tensor``. sm_90 only (on sm_100 DeepGEMM wants UE8M0 scales,
another numeric format); N % 64, K % 128. Kernels are JIT-compiled with nvcc on the first call of
each shape (cached in ``$DG_JIT_CACHE_DIR`` or ``~/.deep_gemm``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from lightx2v_quant.quant import formats as qf
from lightx2v_quant.quant.kernels._adapter import Adapter, bias_as, divisibility_problem, drop_cached

if TYPE_CHECKING:
    from lightx2v_quant.quant.linear import QuantLinear

_B128 = "w8a8-fp8-block128"
_NEW, _LEGACY = "fp8_gemm_nt", "gemm_fp8_fp8_bf16_nt"


def _dg():
    import deep_gemm

    return deep_gemm


def _entry_point() -> str | None:
    dg = _dg()
    return next((name for name in (_NEW, _LEGACY) if callable(getattr(dg, name, None))), None)


class DeepGemmKernel(Adapter):
    name = "deepgemm"
    formats = (_B128,)
    devices = ("cuda",)
    only_sm = (90,)
    library = "deep_gemm"
    install_hint = (
        "build DeepGEMM (git clone --recursive https://github.com/deepseek-ai/DeepGEMM && ./install.sh), "
        "or put the copy bundled in the vllm==0.33.0 wheel (vllm/third_party/deep_gemm) on PYTHONPATH "
        "as deep_gemm; its JIT needs nvcc (CUDA_HOME), CUDA >= 12.3"
    )
    act_quant_order = {_B128: ("vllm", "triton", "torch")}

    def library_problem(self) -> str | None:
        problem = super().library_problem()
        if problem:
            return problem
        if _entry_point() is None:
            return f"kernel 'deepgemm': deep_gemm has neither {_NEW} nor {_LEGACY}"
        return None

    def shape_problem(self, fmt, out_features: int, in_features: int) -> str | None:
        return fmt.shape_problem(out_features, in_features) or divisibility_problem(
            self.name, "DeepGEMM fp8 NT", out_features, in_features, 64, 128
        )

    def notes(self, fmt: str) -> str:
        return f"deep_gemm.{_entry_point()}; " + super().notes(fmt)

    def prepare(self, layer: QuantLinear) -> None:
        drop_cached(layer, "k_dg_sfb", "k_bias")
        if not layer.weight.is_contiguous():
            layer.weight = layer.weight.contiguous()
        sfb = layer.weight_scale.float().contiguous()  # [ceil(N/128), ceil(K/128)]
        dg = _dg()
        transform = getattr(dg, "transform_sf_into_required_layout", None)
        if _entry_point() == _NEW and transform is not None:
            # As vLLM does for Hopper: one group, recipe (1, 128, 128), weight side (not SFA).
            sfb = transform(
                sfb.unsqueeze(0),
                mn=layer.out_features,
                k=layer.in_features,
                recipe=(1, qf.GROUP, qf.GROUP),
                num_groups=1,
                is_sfa=False,
                disable_ue8m0_cast=True,
            ).squeeze(0)
        layer.register_buffer("k_dg_sfb", sfb, persistent=False)

    def quantize_input(self, layer: QuantLinear, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, s = self.act_quantizer(_B128)(x)
        if s.stride(0) != 1:  # row-major scales from the Triton / PyTorch quantizers
            relayout = getattr(_dg(), "get_mn_major_tma_aligned_tensor", None) or getattr(
                _dg(), "get_col_major_tma_aligned_tensor", None
            )
            if relayout is not None:
                s = relayout(s)
        return q, s

    def gemm(
        self, layer: QuantLinear, xq: torch.Tensor, xs: torch.Tensor, *, out_dtype: torch.dtype
    ) -> torch.Tensor:
        dg = _dg()
        out = torch.empty((xq.shape[0], layer.out_features), dtype=torch.bfloat16, device=xq.device)
        if _entry_point() == _NEW:
            dg.fp8_gemm_nt((xq, xs), (layer.weight, layer.k_dg_sfb), out, disable_ue8m0_cast=True)
        else:
            dg.gemm_fp8_fp8_bf16_nt((xq, xs), (layer.weight, layer.k_dg_sfb), out)
        if layer.bias is not None:
            out.add_(bias_as(layer, torch.bfloat16))
        return out if out_dtype == torch.bfloat16 else out.to(out_dtype)


KERNEL = DeepGemmKernel()
