"""The DIT block's fast path: the same three phases as ``WanAttentionBlock`` with the elementwise work in
fused Triton kernels (``lightx2v_quant.fused``). Same math in fp32 as the official path (docs/speed.md).

Memory is the other half of this path (480p Wan-14B: every [tokens, 5120] bf16 activation is 0.3 GiB,
the fp32 residual stream 0.6 GiB, against 13.5 GiB of fp8 weights):
- the residual adds and the q / k norm + RoPE are IN PLACE; the block owns its residual stream (a block
  on the fast path updates the ``x`` it is given, once it has the residual dtype; the DIT's forward
  passes a tensor of its own);
- self-attention quantizes q, k and v for the low-precision backends one at a time and frees each bf16
  tensor as soon as its quantized copy exists;
- the FFN and the attention output projections run in chunks of tokens and add each chunk's output to the
  residual stream right away.
Phases are not fused across their boundaries so that phase offload (which moves one phase's weights at
a time) still holds every weight a phase touches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from lightx2v_quant.attention.backends import LOWP_PV_FP8
from lightx2v_quant.models.wan.attention import attention, split_heads
from lightx2v_quant.quant.activation import QuantizedActivation

# Tokens per chunk of the FFN and of the attention output projections on the fused path: a 480p Wan-14B
# FFN hidden is [32760, 13824] (0.9 GB in bf16, more with its GELU output and quantized copy), a projection
# output 0.3 GB; chunks of ~16k tokens keep the GEMMs large and halve those.
TOKEN_CHUNK = 16384  # block.token_chunk before configure_dit, and speed.token_chunk's default off CUDA
CHUNK_TILE_ROWS = 128  # rows of the GEMMs' output tiles (every Gluon / TMA tile is 128 or 256 rows)


def default_token_chunk(device: str = "cuda") -> int:
    """speed.token_chunk=null: on a GPU, 128 tokens per SM (16,896 on an H100 / H200), so that a chunk's
    GEMM has a whole number of output-tile waves on the persistent grid (one program per SM): 132 row tiles
    times any number of column tiles. 16,384 tokens (128 row tiles) left a last wave of 52 of 132 tiles in
    each N = 5120 projection of a 480p chunk. ``device``: the compute device type; elsewhere TOKEN_CHUNK."""
    if device != "cuda" or not torch.cuda.is_available():
        return TOKEN_CHUNK
    return CHUNK_TILE_ROWS * torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count

if TYPE_CHECKING:
    from lightx2v_quant.models.wan.dit import WanAttentionBlock, WanFFN, WanSelfAttention


def residual_stream(block: WanAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """x in the block's residual dtype: block 0 receives the run-dtype patch embedding (a copy is made
    when the dtypes differ); later blocks get the stream itself, which the phases update in place."""
    return x if x.dtype == block.residual_dtype else x.to(block.residual_dtype)


def self_attn_phase(
    block: WanAttentionBlock, x: torch.Tensor, mod: Sequence[torch.Tensor], rope
) -> torch.Tensor:
    """x += self_attn(LN(x) * (1 + scale) + shift) * gate; the norm output may come pre-quantized."""
    from lightx2v_quant import fused

    # the norm output is passed inline (no reference kept here) so that self_attention can free it early
    if block.self_attn.fused:
        out = self_attention(block.self_attn, _norm1(block, x, mod), rope)
        return project_add_(block.self_attn.o, out, x, block.token_chunk, mod[2], block.fuse_residual)
    return fused.gated_residual_(x, block.self_attn(_norm1(block, x, mod), rope), mod[2])


def _norm1(block: WanAttentionBlock, x: torch.Tensor, mod: Sequence[torch.Tensor]):
    from lightx2v_quant import fused

    return fused.layer_norm_modulate(
        x, block.norm1.eps, block.run_dtype, shift=mod[0], scale=mod[1], quant=block.prequant[0]
    )


def cross_attn_phase(
    block: WanAttentionBlock, x: torch.Tensor, context: torch.Tensor, context_img: torch.Tensor | None
) -> torch.Tensor:
    """x += cross_attn(norm3(x)) (no gate). norm3 runs as a module call (its fused_to set by configure_dit),
    so an offload hook on it still brings its weights (and the cross-attention's) in before they are read."""
    ca = block.cross_attn
    out = ca.attend_all(block.norm3(x), context, context_img)
    return project_add_(ca.o, out, x, block.token_chunk, None, block.fuse_residual)


def project_add_(
    linear, out: torch.Tensor, x: torch.Tensor, chunk: int, gate: torch.Tensor | None, in_epilogue: bool = True
) -> torch.Tensor:
    """x += linear(out) * gate, ``chunk`` tokens at a time (0: all at once): the projection's output (and
    its quantized input) never exists for all tokens at once. With ``in_epilogue``, a layer that can
    (``adds_into``: our Triton fp8 / int8 GEMMs) adds each chunk into x in its GEMM's epilogue, so the
    chunk's output never exists at all; the numerics are those of the separate add."""
    from lightx2v_quant import fused

    chunk = chunk or x.shape[1]
    for i in range(0, x.shape[1], chunk):
        xi, g = _rows(x, i, chunk), _gate_rows(gate, i, chunk)
        if in_epilogue and hasattr(linear, "adds_into") and linear.adds_into(xi, g):
            linear(_rows(out, i, chunk), residual=xi, gate=g)  # a module call: offload hooks still fire
        else:
            fused.gated_residual_(xi, linear(_rows(out, i, chunk)), g)
    return x


def _gate_rows(gate: torch.Tensor | None, start: int, chunk: int) -> torch.Tensor | None:
    """The gate of tokens [start, start + chunk): [B, 1, D] broadcasts; per-token gates [B, L, D] are cut."""
    return gate if gate is None or gate.shape[1] == 1 else _rows(gate, start, chunk)


def layer_norm(norm, x: torch.Tensor):
    """WanLayerNorm.forward on the fast path: affine (or plain) LN in one pass, in norm.fused_to's dtype."""
    from lightx2v_quant import fused

    dtype, quant = norm.fused_to
    return fused.layer_norm_modulate(x, norm.eps, dtype, weight=norm.weight, bias=norm.bias, quant=quant)


def ffn_phase(block: WanAttentionBlock, x: torch.Tensor, mod: Sequence[torch.Tensor]) -> torch.Tensor:
    """x += FFN(LN(x) * (1 + scale) + shift) * gate, block.token_chunk tokens at a time (the norm output of all
    tokens is made first, so updating x chunk by chunk does not feed back)."""
    from lightx2v_quant import fused

    h = fused.layer_norm_modulate(
        x, block.norm2.eps, block.run_dtype, shift=mod[3], scale=mod[4], quant=block.prequant[2]
    )
    return project_add_(block.ffn, h, x, block.token_chunk, mod[5], block.fuse_residual)


def ffn_gelu_quant(
    ffn: WanFFN,
    x: torch.Tensor | QuantizedActivation,
    residual: torch.Tensor | None = None,
    gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """WanFFN.forward on the fast path: the up projection, then GELU + per-token quantization in one kernel
    (no bf16 GELU copy, no quantization pass in the down projection), then the down projection (adding
    into ``residual`` in its epilogue when given: ``WanFFN.adds_into``)."""
    from lightx2v_quant import fused

    h = ffn[0](x)  # [B, L, ffn_dim] in the run dtype
    # the GPU's approximate tanh: the exact tanhf made this kernel compute-bound (docs/speed.md)
    q = fused.gelu_quantize(h, ffn.gelu_quant, fast=h.is_cuda)
    del h
    return ffn[2](q) if residual is None else ffn[2](q, residual=residual, gate=gate)


def _rows(h, start: int, size: int):
    """Tokens [start, start + size) of a [B, L, D] activation (plain or pre-quantized)."""
    if isinstance(h, QuantizedActivation):
        return QuantizedActivation(h.data[:, start : start + size], h.scale[:, start : start + size], h.dtype)
    return h[:, start : start + size]


def self_attention(
    attn: WanSelfAttention, x: torch.Tensor | QuantizedActivation, rope: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """WanSelfAttention.forward on the fast path up to the output projection ([B, L, D] before ``o``):
    q / k RMSNorm + RoPE in place, and for our low-precision backends each of q, k, v quantized and its bf16
    tensor freed before the next one exists.

    ``x`` must be passed without another reference held (``del`` here frees it)."""
    from lightx2v_quant import fused

    x = x if isinstance(x, QuantizedActivation) else x.to(attn.run_dtype)
    heads, cos, sin = attn.num_heads, rope[0], rope[1]
    if attn.attention_backend not in LOWP_PV_FP8:
        q = fused.rms_norm_rope_(attn.q(x), attn.norm_q.weight, cos, sin, heads, attn.norm_q.eps)
        k = fused.rms_norm_rope_(attn.k(x), attn.norm_k.weight, cos, sin, heads, attn.norm_k.eps)
        v = attn.v(x)
        del x
        q, k, v = (split_heads(t, heads) for t in (q, k, v))
        return attention(q, k, v, attn.attention_backend).flatten(2)

    from lightx2v_quant.attention import lowp_triton as lowp

    q = attn.q(x)
    lq, dtype = q.shape[1], q.dtype
    q = lowp_q(attn, q, cos, sin)  # the bf16 q is freed by the rebinding
    k = fused.rms_norm_rope_(attn.k(x), attn.norm_k.weight, cos, sin, heads, attn.norm_k.eps)
    k = lowp.quantize_k(split_heads(k, heads))
    v = split_heads(attn.v(x), heads)
    del x
    v = lowp_v(attn, v)  # the bf16 v is freed by the rebinding
    return lowp.attend(q, k, v, lq, lq, heads, dtype).flatten(2)


def lowp_q(attn, q: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None):
    """q [B, L, D] for our low-precision attention: its RMSNorm (and RoPE, unless ``cos`` is None) and int8
    quantization in one pass, softmax scale and log2(e) folded in (``fused.rms_norm_rope_quant``: the same
    bytes as quantizing the normalized q); the (int8 q, scales) pair ``lowp_triton.attend`` takes."""
    from lightx2v_quant import fused
    from lightx2v_quant.attention.lowp_triton import LOG2E

    sm_scale = (q.shape[-1] // attn.num_heads) ** -0.5 * LOG2E
    return fused.rms_norm_rope_quant(q, attn.norm_q.weight, cos, sin, attn.num_heads, attn.norm_q.eps, sm_scale)


def lowp_v(attn, v: torch.Tensor):
    """v [B, L, H, D] as the attention's backend reads it: fp8 V^T with its statistics, or v itself."""
    from lightx2v_quant.attention import lowp_triton as lowp

    return lowp.quantize_v(v) if LOWP_PV_FP8[attn.attention_backend] else v


def cross_attend_lowp(attn, q: torch.Tensor):
    """WanCrossAttention.attend_all's ``attend(k, v)`` on the fast path with a low-precision backend, for
    q = attn.q(x) [B, L, D] (passed without another reference held): q's RMSNorm and int8 quantization in
    one pass (``lowp_q`` without RoPE: the bf16 q is neither normalized in place nor read again), then per
    call the text (or image) keys' quantization and the attention kernel."""
    from lightx2v_quant.attention import lowp_triton as lowp

    lq, dtype, heads = q.shape[1], q.dtype, attn.num_heads
    q = lowp_q(attn, q, None, None)

    def attend(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        kq = lowp.quantize_k(split_heads(k, heads).to(dtype))
        vq = lowp_v(attn, split_heads(v, heads).to(dtype))
        return lowp.attend(q, kq, vq, lq, k.shape[1], heads, dtype).flatten(2)

    return attend


def cross_q_norm(attn, q: torch.Tensor) -> torch.Tensor:
    """The cross-attention's q RMSNorm in place (one pass instead of an fp32 copy of [tokens, dim])."""
    from lightx2v_quant import fused

    return fused.rms_norm_rope_(q, attn.norm_q.weight, None, None, attn.num_heads, attn.norm_q.eps)


def head_norm(head, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The head's LN(x) * (1 + scale) + shift in fp32, one pass (the official path makes three fp32 copies)."""
    from lightx2v_quant import fused

    return fused.layer_norm_modulate(x, head.norm.eps, torch.float32, shift=shift, scale=scale)
