"""Kernel `marlin`: int4-g128 weight-only GEMM with Marlin, from vLLM's ops or the standalone package.

1. vLLM's Marlin ops (same sources as the `vllm` kernel: an installed vllm, or the ops library named by
   ``LIGHTX2V_QUANT_VLLM_OPS``). ``prepare`` converts our weight (uint8 [N, K/2], +8, even k in the low
   nibble) to GPTQ int32 [K/8, N] and repacks it with ``gptq_marlin_repack(w, K, N, 4, False)``;
   scales [N, K/128] go to [K/128, N] in the activation dtype in Marlin's order. Each call is
   ``marlin_gemm(a, None, w, bias, scales, None, None, None, workspace, uint4b8 id, M, N, K, False,
   True, False)`` (fp32 global reduce, no atomics; bias fused, permuted like the scales); releases that
   still call it ``gptq_marlin_gemm`` are bound by argument name from the op's schema. bf16 and fp16
   activations, N % 64, K % 128, any M.
2. Otherwise IST-DASLab's ``marlin`` package (github.com/IST-DASLab/marlin; PyPI's ``marlin`` is another
   project): fp16 activations only, N % 256, K % 128. ``prepare`` packs through its ``Layer.pack``.
Both need sm_80+. fp32 runs compute in bf16 (vLLM ops); bf16 runs on the standalone package are refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from lightx2v_quant.quant import formats as qf
from lightx2v_quant.quant.kernels import _marlin_layout as ml
from lightx2v_quant.quant.kernels import _vllm_ops
from lightx2v_quant.quant.kernels._adapter import Adapter, cached, divisibility_problem, drop_cached
from lightx2v_quant.quant.kernels.base import KernelUnavailable

if TYPE_CHECKING:
    from lightx2v_quant.quant.linear import QuantLinear

_INT4 = "w4a16-int4-g128"
_DERIVED = ("k_marlin_q", "k_marlin_s", "k_marlin_bias", "k_marlin_s16")

# Values for every argument name the Marlin GEMM op has had (names normalized: no "_or_none").
_GEMM_DEFAULTS: dict[str, Any] = {
    "c": None,
    "a_scales": None,
    "global_scale": None,
    "b_zeros": None,
    "g_idx": None,
    "perm": None,
    "is_k_full": True,
    "use_atomic_add": False,
    "use_fp32_reduce": True,
    "is_zp_float": False,
}
_WORKSPACES: dict[tuple[str, int | None], torch.Tensor] = {}


def _arg_names(op) -> list[str]:
    names = [a.name for a in op.default._schema.arguments]
    return [n[: -len("_or_none")] if n.endswith("_or_none") else n for n in names]


def _gemm_op():
    """(op, argument names): the 0.33 ``marlin_gemm`` or an older ``gptq_marlin_gemm``."""
    for name in ("marlin_gemm", "gptq_marlin_gemm"):
        if not _vllm_ops.missing_ops(name):
            op = getattr(torch.ops._C, name)
            return op, _arg_names(op)
    raise KernelUnavailable("vLLM's ops have neither marlin_gemm nor gptq_marlin_gemm")


def _vllm_problem() -> str | None:
    why = _vllm_ops.problem("gptq_marlin_repack")
    if why:
        return why
    try:
        _, names = _gemm_op()
    except KernelUnavailable as exc:
        return str(exc)
    unknown = [n for n in names if n not in _GEMM_DEFAULTS and n not in _KNOWN_GEMM_ARGS]
    return f"vLLM's Marlin GEMM takes arguments we do not know: {', '.join(unknown)}" if unknown else None


_KNOWN_GEMM_ARGS = {
    "a",
    "b_q_weight",
    "b_bias",
    "b_scales",
    "workspace",
    "b_type_id",
    "b_q_type_id",
    "size_m",
    "size_n",
    "size_k",
}


def _standalone_problem() -> str | None:
    try:
        import marlin
    except Exception as exc:
        return f"the standalone marlin package does not import ({type(exc).__name__}: {exc})"
    if not (callable(getattr(marlin, "mul", None)) and hasattr(marlin, "Layer")):
        return "the importable 'marlin' is not IST-DASLab's Marlin (no marlin.mul / marlin.Layer)"
    return None


def backend() -> str | None:
    """'vllm', 'standalone' or None, in that order of preference."""
    if _vllm_problem() is None:
        return "vllm"
    if _standalone_problem() is None:
        return "standalone"
    return None


def _sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (Marlin's workspace holds 4 locks per SM)."""
    if device.type != "cuda":
        return 1  # CPU stand-ins in tests
    return torch.cuda.get_device_properties(device).multi_processor_count


def _workspace(device: torch.device, size: int) -> torch.Tensor:
    """Zeroed int32 locks shared by all layers on a device (Marlin leaves them zeroed after each call)."""
    key = (device.type, device.index)
    ws = _WORKSPACES.get(key)
    if ws is None or ws.numel() < size:
        ws = torch.zeros(size, dtype=torch.int32, device=device)
        _WORKSPACES[key] = ws
    return ws


class MarlinKernel(Adapter):
    name = "marlin"
    formats = (_INT4,)
    devices = ("cuda",)
    min_sm = 80

    def library_problem(self) -> str | None:
        if backend() is not None:
            return None
        return (
            f"kernel 'marlin' needs vLLM's Marlin ops ({_vllm_problem()}) or IST-DASLab's marlin package, "
            f"built from github.com/IST-DASLab/marlin ({_standalone_problem()})"
        )

    def shape_problem(self, fmt, out_features: int, in_features: int) -> str | None:
        problem = fmt.shape_problem(out_features, in_features)
        if problem:
            return problem
        if backend() == "standalone":
            return divisibility_problem(self.name, "IST-DASLab Marlin", out_features, in_features, 256, 128)
        return divisibility_problem(self.name, "vLLM Marlin", out_features, in_features, 64, 128)

    def notes(self, fmt: str) -> str:
        which = backend()
        if which == "vllm":
            return f"vLLM Marlin ops ({_gemm_op_name()}) from {_vllm_ops.source()}"
        return "IST-DASLab marlin package (fp16 only)" if which == "standalone" else ""

    # -- prepare ------------------------------------------------------------------------------
    def prepare(self, layer: QuantLinear) -> None:
        drop_cached(layer, *_DERIVED)
        which = backend()
        if which is None:
            raise KernelUnavailable(self.library_problem() or "Marlin is not available")
        if which == "vllm":
            k, n = layer.in_features, layer.out_features
            gptq = ml.to_gptq(layer.weight)  # int32 [K/8, N]
            args = [gptq, k, n, 4]
            if "perm" in _arg_names(torch.ops._C.gptq_marlin_repack):  # releases before the perm removal
                args.insert(1, torch.empty(0, dtype=torch.int32, device=gptq.device))
            else:
                args.append(False)  # is_a_8bit
            layer.register_buffer("k_marlin_q", torch.ops._C.gptq_marlin_repack(*args), persistent=False)
            self._scales(layer, torch.bfloat16)
        else:
            self._prepare_standalone(layer)

    def _scales(self, layer: QuantLinear, dtype: torch.dtype) -> torch.Tensor:
        def make() -> torch.Tensor:
            return ml.permute_scales(layer.weight_scale.t().to(dtype))  # [K/128, N]

        return cached(layer, "k_marlin_s", make, like=layer.weight, dtype=dtype)

    def _bias(self, layer: QuantLinear, dtype: torch.dtype) -> torch.Tensor | None:
        if layer.bias is None:
            return None
        return cached(
            layer,
            "k_marlin_bias",
            lambda: ml.permute_bias(layer.bias.to(dtype)),
            like=layer.bias,
            dtype=dtype,
        )

    def _prepare_standalone(self, layer: QuantLinear) -> None:
        import marlin

        k, n = layer.in_features, layer.out_features
        scales16 = layer.weight_scale.to(torch.float16)  # [N, K/128]
        # Layer.pack takes a fake-quantized fp16 linear and re-derives the integers by rounding w / s,
        # which is exact here: |q| <= 8 and w = q * s is formed from the same fp16 scales.
        w16 = (
            qf.unpack_int4(layer.weight).reshape(n, k // qf.GROUP, qf.GROUP).to(torch.float16)
            * scales16.unsqueeze(-1)
        ).reshape(n, k)
        shell = torch.nn.Linear(k, n, bias=False, dtype=torch.float16, device=layer.weight.device)
        shell.weight.data = w16
        packed = marlin.Layer(k, n, groupsize=qf.GROUP)
        packed.pack(shell, scales16)
        layer.register_buffer("k_marlin_q", packed.B.to(layer.weight.device), persistent=False)
        layer.register_buffer("k_marlin_s16", packed.s.to(layer.weight.device), persistent=False)

    # -- apply ----------------------------------------------------------------------------------
    def quantize_input(self, layer: QuantLinear, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (x,)  # weight-only: activations stay in high precision

    def gemm(self, layer: QuantLinear, x: torch.Tensor, *, out_dtype: torch.dtype) -> torch.Tensor:
        if "k_marlin_s16" in layer._buffers:
            return self._gemm_standalone(layer, x, out_dtype)
        dtype = out_dtype if out_dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
        a = x.to(dtype).contiguous()
        m, n, k = a.shape[0], layer.out_features, layer.in_features
        op, names = _gemm_op()
        values = dict(
            _GEMM_DEFAULTS,
            a=a,
            b_q_weight=layer.k_marlin_q,
            b_bias=self._bias(layer, dtype),
            b_scales=self._scales(layer, dtype),
            workspace=_workspace(a.device, _sm_count(a.device) * 4),
            b_type_id=ml.UINT4B8_ID,
            b_q_type_id=ml.UINT4B8_ID,
            size_m=m,
            size_n=n,
            size_k=k,
        )
        y = op(*[values[name] for name in names])
        if "b_bias" not in names and layer.bias is not None:
            y = y + layer.bias.to(dtype)
        return y if dtype == out_dtype else y.to(out_dtype)

    def _gemm_standalone(self, layer: QuantLinear, x: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        import marlin

        if x.dtype != torch.float16:
            raise KernelUnavailable(
                f"the standalone marlin package computes in fp16 only, got {x.dtype} activations; run with "
                f"dtype float16, or provide vLLM's Marlin ops (bf16 and fp16)"
            )
        a = x.contiguous()
        y = torch.empty((a.shape[0], layer.out_features), dtype=torch.float16, device=a.device)
        max_par = 16
        marlin.mul(
            a,
            layer.k_marlin_q,
            y,
            layer.k_marlin_s16,
            _workspace(a.device, layer.out_features // 128 * max_par),
            -1,
            -1,
            -1,
            max_par,
        )
        if layer.bias is not None:
            y = y + layer.bias.to(y.dtype)
        return y


def _gemm_op_name() -> str:
    return "marlin_gemm" if not _vllm_ops.missing_ops("marlin_gemm") else "gptq_marlin_gemm"


KERNEL = MarlinKernel()
