"""The DIT block's fast path: the same three phases as ``WanAttentionBlock`` with the elementwise work in
fused Triton kernels (``lightx2v_quant.fused``). Same math in fp32 as the official path (docs/speed.md).

Each phase reads the fp32 residual stream once for its norm and once for its residual add (the FFN runs
in chunks of tokens to bound its hidden activations); phases are not
fused across their boundaries so that phase offload (which moves one phase's weights at a time) still
holds every weight a phase touches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from lightx2v_quant.quant.activation import QuantizedActivation

# Tokens per FFN chunk on the fused path: a 480p Wan-14B FFN hidden is [32760, 13824] (0.9 GB in bf16, more
# with its GELU output and quantized copy); 8192-token chunks keep GEMMs large and cut that by 4x.
FFN_CHUNK = 8192

if TYPE_CHECKING:
    from lightx2v_quant.models.wan.dit import WanAttentionBlock, WanFFN, WanSelfAttention


def self_attn_phase(
    block: WanAttentionBlock, x: torch.Tensor, mod: Sequence[torch.Tensor], rope
) -> torch.Tensor:
    """x + self_attn(LN(x) * (1 + scale) + shift) * gate; the norm output may come pre-quantized."""
    from lightx2v_quant import fused

    # the norm output is passed inline so that self_attn can drop it once q, k, v exist
    y = block.self_attn(
        fused.layer_norm_modulate(
            x, block.norm1.eps, block.run_dtype, shift=mod[0], scale=mod[1], quant=block.prequant[0]
        ),
        rope,
    )
    return fused.gated_residual(x, y, mod[2])


def cross_attn_phase(
    block: WanAttentionBlock, x: torch.Tensor, context: torch.Tensor, context_img: torch.Tensor | None
) -> torch.Tensor:
    """x + cross_attn(norm3(x)) (no gate). norm3 runs as a module call (its fused_to set by configure_dit),
    so an offload hook on it still brings its weights in before they are read."""
    from lightx2v_quant import fused

    return fused.gated_residual(x, block.cross_attn(block.norm3(x), context, context_img))


def layer_norm(norm, x: torch.Tensor):
    """WanLayerNorm.forward on the fast path: affine (or plain) LN in one pass, in norm.fused_to's dtype."""
    from lightx2v_quant import fused

    dtype, quant = norm.fused_to
    return fused.layer_norm_modulate(x, norm.eps, dtype, weight=norm.weight, bias=norm.bias, quant=quant)


def ffn_phase(block: WanAttentionBlock, x: torch.Tensor, mod: Sequence[torch.Tensor]) -> torch.Tensor:
    """x + FFN(LN(x) * (1 + scale) + shift) * gate."""
    from lightx2v_quant import fused

    h = fused.layer_norm_modulate(
        x, block.norm2.eps, block.run_dtype, shift=mod[3], scale=mod[4], quant=block.prequant[2]
    )
    tokens = x.shape[1]
    if tokens <= FFN_CHUNK:
        y = block.ffn(h)
    else:  # the [tokens, ffn_dim] hidden (and its GELU / quantized copies) one chunk at a time
        y = torch.cat([block.ffn(_rows(h, i, FFN_CHUNK)) for i in range(0, tokens, FFN_CHUNK)], dim=1)
    del h
    return fused.gated_residual(x, y, mod[5])


def ffn_gelu_quant(ffn: WanFFN, x: torch.Tensor | QuantizedActivation) -> torch.Tensor:
    """WanFFN.forward on the fast path: the up projection, then GELU + per-token quantization in one kernel
    (no bf16 GELU copy, no quantization pass in the down projection), then the down projection."""
    from lightx2v_quant import fused

    h = ffn[0](x)  # [B, L, ffn_dim] in the run dtype
    q = fused.gelu_quantize(h, ffn.gelu_quant)
    del h
    return ffn[2](q)


def _rows(h, start: int, size: int):
    """Tokens [start, start + size) of a [B, L, D] activation (plain or pre-quantized)."""
    if isinstance(h, QuantizedActivation):
        return QuantizedActivation(h.data[:, start : start + size], h.scale[:, start : start + size], h.dtype)
    return h[:, start : start + size]


def qk_norm_rope(
    attn: WanSelfAttention, x, rope: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, ...]:
    """q, k [B, L, D] after their RMSNorm and RoPE, in one pass over each."""
    from lightx2v_quant import fused

    return fused.qk_norm_rope(
        attn.q(x),
        attn.k(x),
        attn.norm_q.weight,
        attn.norm_k.weight,
        rope[0],
        rope[1],
        attn.num_heads,
        attn.norm_q.eps,
    )
