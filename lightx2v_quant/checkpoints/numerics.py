"""How the quantized tensors of a checkpoint are computed, identically by the converter and online.

The numerics are the formats' own (quant/formats.py; fp8 / int8 per-channel weights follow LightX2V's
converter byte for byte, quant/lightx2v_numerics.py); this module names the two uses: the tensors a
file stores, and the loader's online quantizer.
"""

from __future__ import annotations

import torch

from lightx2v_quant.quant import formats as qf
from lightx2v_quant.quant.formats import Format
from lightx2v_quant.quant.lightx2v_numerics import (  # noqa: F401  (re-exported for the converter/tests)
    FP8_MAX,
    INT8_QMAX,
    LIGHTX2V_AMAX_FLOOR,
    lightx2v_fp8_channel,
    lightx2v_int8_channel,
    qtorch_e4m3_round,
)


def checkpoint_tensors(fmt: Format | str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint of ``fmt`` stores for one linear: ``weight`` and ``weight_scale``.

    Per-channel scales keep the weight's dtype (as LightX2V writes them); our formats use fp32.
    """
    return (qf.get_format(fmt) if isinstance(fmt, str) else fmt).checkpoint_tensors(weight)


def checkpoint_quantizer(layer, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """The loader's online quantizer: the format's tensors with the layer's scale dtype (fp32).

    With this, "convert -> save -> load" and "load the original with online quantization" give the
    same QuantLinear tensors bit for bit (the loader also casts a file's scale to fp32).
    """
    return layer.format.quantize_weight(weight)
