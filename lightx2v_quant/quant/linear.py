"""QuantLinear: a linear layer holding quantized weights in their on-disk layout, computed by a kernel."""

from __future__ import annotations

import torch
from torch import nn

from lightx2v_quant.quant.activation import QuantizedActivation
from lightx2v_quant.quant.kernels import Kernel, get_kernel
from lightx2v_quant.quant.schemes import Scheme, get_scheme


class QuantLinear(nn.Module):
    """Drop-in for ``nn.Linear`` with quantized weights.

    State-dict keys follow LightX2V's files: ``weight`` (quantized, [N, K] or packed), ``weight_scale``
    and ``bias`` (high precision). The kernel's ``prepare`` adds derived, non-persistent buffers after
    loading; ``forward`` flattens the input to [M, K] and calls the kernel.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        scheme: Scheme | str,
        *,
        kernel: str | None = None,
        bias_dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str | None = None,
        fast_accum: bool = False,
    ) -> None:
        super().__init__()
        self.scheme = get_scheme(scheme) if isinstance(scheme, str) else scheme
        self.format = self.scheme.fmt
        # The kernel that runs: the scheme's own, unless validation substituted one (quant.fallback).
        self.kernel_name = kernel or self.scheme.kernel
        self.in_features = in_features
        self.out_features = out_features
        self.fast_accum = fast_accum
        problem = self.format.shape_problem(out_features, in_features)
        if problem:
            raise ValueError(problem)
        for name, spec in self.format.tensor_specs(out_features, in_features).items():
            self.register_buffer(name, torch.empty(spec.shape, dtype=spec.dtype, device=device))
        if bias:
            self.register_buffer("bias", torch.empty(out_features, dtype=bias_dtype, device=device))
        else:
            self.bias = None
        # Device type ("cuda"/"cpu") the kernel's derived buffers were made for; None before prepare.
        # Moving the module (offload) keeps them; running on another device type re-prepares.
        self.prepared_for: str | None = None

    @property
    def kernel(self) -> Kernel:
        return get_kernel(self.kernel_name)

    @classmethod
    def shell_for(
        cls, linear: nn.Linear, scheme: Scheme | str, *, kernel: str | None = None, fast_accum: bool = False
    ) -> QuantLinear:
        """An empty layer on ``meta`` with the shape and bias dtype of ``linear``, to be loaded."""
        has_bias = linear.bias is not None
        return cls(
            linear.in_features,
            linear.out_features,
            has_bias,
            scheme,
            kernel=kernel,
            bias_dtype=linear.bias.dtype if has_bias else torch.bfloat16,
            device="meta",
            fast_accum=fast_accum,
        )

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, scheme: Scheme | str, *, kernel: str | None = None, fast_accum: bool = False
    ) -> QuantLinear:
        """Quantize an existing ``nn.Linear`` (online quantization) with the format's reference quantizer."""
        layer = cls.shell_for(linear, scheme, kernel=kernel, fast_accum=fast_accum)
        layer.load_quantized(layer.format.quantize_weight(linear.weight.detach()), linear.bias)
        return layer

    def load_quantized(self, tensors: dict[str, torch.Tensor], bias: torch.Tensor | None = None) -> None:
        """Take ownership of quantized tensors (shapes and dtypes checked against the format)."""
        specs = self.format.tensor_specs(self.out_features, self.in_features)
        for name, spec in specs.items():
            t = tensors[name]
            if tuple(t.shape) != spec.shape or t.dtype != spec.dtype:
                raise ValueError(
                    f"{name}: expected {spec.dtype} {list(spec.shape)} for {self.scheme.name}, "
                    f"got {t.dtype} {list(t.shape)}"
                )
            setattr(self, name, t.detach())
        if self.bias is not None:
            if bias is None:
                raise ValueError("this layer has a bias but none was given")
            self.bias = bias.detach().to(self.bias.dtype)
        self.prepared_for = None

    def prepare(self) -> None:
        """Let the kernel re-lay out the tensors (call after loading, on the compute device)."""
        self.kernel.prepare(self)
        self.prepared_for = self.weight.device.type

    def adds_into(self, residual: torch.Tensor, gate: torch.Tensor | None = None) -> bool:
        """Whether ``self(x, residual=residual, gate=gate)`` can add this layer's output into ``residual``
        itself (the kernel's GEMM epilogue): residual [..., N] whose rows form one [M, N] view, gate
        None or a single [N] fp32 vector (e.g. [1, 1, N])."""
        if not _rows_view(residual, self.out_features):
            return False
        rows = residual.view(-1, self.out_features)
        return self.kernel.adds_into(self, rows, None if gate is None else gate.reshape(-1))

    def forward(
        self,
        x: torch.Tensor | QuantizedActivation,
        residual: torch.Tensor | None = None,
        gate: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """y = x W^T + b; with ``residual`` (where ``adds_into`` said yes): residual += y * gate IN PLACE,
        returning residual (y never exists in memory)."""
        prequantized = isinstance(x, QuantizedActivation)  # from a fused producer (kernel.prequantized_input)
        data = x.data if prequantized else x
        if self.prepared_for != data.device.type:
            self.prepare()
        if residual is not None:
            rows = residual.view(-1, self.out_features)
            inp = x if prequantized else data.reshape(-1, self.in_features)
            self.kernel.apply_add_(self, inp, rows, None if gate is None else gate.reshape(-1))
            return residual
        lead = data.shape[:-1]
        if prequantized:
            y = self.kernel.apply_quantized(self, data.reshape(-1, self.in_features), x.scale.reshape(-1, 1),
                                            x.dtype)
        else:
            y = self.kernel.apply(self, x.reshape(-1, self.in_features))
        return y.reshape(*lead, self.out_features)

    def weight_bytes(self) -> int:
        """Bytes of the persistent tensors (what the layer costs on disk and in memory)."""
        return sum(t.numel() * t.element_size() for _, t in self.state_dict().items())

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, scheme={self.scheme.name}, kernel={self.kernel_name}"
        )


def _rows_view(t: torch.Tensor, n: int) -> bool:
    """Whether t [..., n] (unit last stride) is one [M, n] matrix in memory, i.e. ``t.view(-1, n)`` works
    and writes t (strides only, so that compiled graphs can take the decision)."""
    if t.dim() < 2 or t.shape[-1] != n or t.stride(-1) != 1:
        return False
    return all(t.shape[i] == 1 or t.stride(i) == t.stride(i + 1) * t.shape[i + 1] for i in range(t.dim() - 2))
