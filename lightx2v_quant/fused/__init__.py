"""Fused Triton kernels for the DIT's elementwise work (norms, modulation, RoPE, residual adds, the FFN's
GELU + quantization), each with a PyTorch reference of the official numerics. See docs/speed.md."""

from lightx2v_quant.fused.gelu import gelu_quantize, gelu_quantize_reference
from lightx2v_quant.fused.norm import layer_norm_modulate, layer_norm_modulate_reference
from lightx2v_quant.fused.residual import gated_residual_, gated_residual_reference
from lightx2v_quant.fused.rope import rms_norm_rope_, rms_norm_rope_quant, rms_norm_rope_reference

__all__ = [
    "gated_residual_",
    "gated_residual_reference",
    "gelu_quantize",
    "gelu_quantize_reference",
    "layer_norm_modulate",
    "layer_norm_modulate_reference",
    "rms_norm_rope_",
    "rms_norm_rope_quant",
    "rms_norm_rope_reference",
]
