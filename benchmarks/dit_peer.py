"""The diffusers peer for benchmarks/dit.py: ``WanTransformer3DModel`` on OUR random weights (the same
tensors, renamed to diffusers keys, no copy), bf16, optionally with torchao float8 per-row on the block
linears, compiled with ``compile_repeated_blocks(fullgraph=True)`` as diffusers recommends."""

from __future__ import annotations

import torch
from torch import nn

from lightx2v_quant.models.wan import WanDiT
from lightx2v_quant.models.wan.keymap import official_state_dict_to_diffusers


def diffusers_from_ours(model: WanDiT) -> nn.Module:
    """A diffusers WanTransformer3DModel whose parameters ARE ``model``'s tensors (bf16, same device)."""
    from diffusers import WanTransformer3DModel

    c = model.cfg
    with torch.device("meta"):
        peer = WanTransformer3DModel(
            patch_size=c.patch_size,
            num_attention_heads=c.num_heads,
            attention_head_dim=c.head_dim,
            in_channels=c.in_dim,
            out_channels=c.out_dim,
            text_dim=c.text_dim,
            freq_dim=c.freq_dim,
            ffn_dim=c.ffn_dim,
            num_layers=c.num_layers,
            eps=c.eps,
            image_dim=c.image_dim,
            added_kv_proj_dim=c.dim if c.image_dim is not None else None,
        )
    sd = official_state_dict_to_diffusers(model.state_dict())
    missing, unexpected = peer.load_state_dict(sd, strict=False, assign=True)
    missing = [k for k in missing if not k.startswith("rope.") and "norm_added_q" not in k]
    if missing or unexpected:
        raise RuntimeError(f"diffusers peer: missing {missing[:5]}, unexpected {unexpected[:5]}")
    device = next(model.parameters()).device
    rope = peer.rope  # its cos/sin tables are buffers computed at construction: rebuild them on the device
    with torch.device(device):
        peer.rope = type(rope)(rope.attention_head_dim, rope.patch_size, rope.max_seq_len)
    return peer.eval().requires_grad_(False)


def torchao_float8(peer: nn.Module) -> None:
    """torchao float8 dynamic activations + weights, per-row scales, on the linears of the blocks."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    quantize_(
        peer,
        Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
        filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and fqn.startswith("blocks."),
    )


def peer_forward(peer: nn.Module, inp: dict) -> torch.Tensor:
    out = peer(
        hidden_states=inp["x"].to(torch.bfloat16),
        timestep=inp["t"],
        encoder_hidden_states=inp["context"].to(torch.bfloat16),
        return_dict=False,
    )[0]
    return out.float()
