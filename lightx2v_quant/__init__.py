"""lightx2v_quant: quantized (fp8 / int8 / int4) inference for Wan-family video diffusion models."""

__version__ = "0.1.0"
