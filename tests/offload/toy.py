"""A toy model shaped like the Wan DIT (blocks with modulation, self_attn, norm3, cross_attn, ffn) whose
blocks mix dtypes and schemes on purpose: int8 / fp8 / int4 quantized linears, bf16 norms and biases, fp32
modulation, and blocks that differ from each other."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from lightx2v_quant.quant.apply import quantize_model


class Norm(nn.Module):
    """LayerNorm whose affine parameters are stored in another dtype than the activations."""

    def __init__(self, dim: int, dtype: torch.dtype = torch.bfloat16, affine: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(1 + 0.1 * torch.randn(dim).to(dtype)) if affine else None
        self.bias = nn.Parameter(0.1 * torch.randn(dim).to(dtype)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        return F.layer_norm(x, x.shape[-1:], w, b)


class Cast(nn.Module):
    """Runs a linear in its own dtype (an unquantized bf16 layer inside an fp32 model)."""

    def __init__(self, dim_in: int, dim_out: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.lin = nn.Linear(dim_in, dim_out).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.to(self.lin.weight.dtype)).to(x.dtype)


class Attn(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = Norm(dim)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor | None = None) -> torch.Tensor:
        ctx = x if ctx is None else ctx
        b, n, d = x.shape
        q = self.norm_q(self.q(x)).view(b, n, self.heads, -1).transpose(1, 2)
        k = self.k(ctx).view(b, ctx.shape[1], self.heads, -1).transpose(1, 2)
        v = self.v(ctx).view(b, ctx.shape[1], self.heads, -1).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        return self.o(y)


class Block(nn.Module):
    def __init__(self, dim: int, ffn: int, heads: int, ffn_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim ** 0.5)  # fp32, read only at the start
        self.norm1 = Norm(dim, affine=False)
        self.self_attn = Attn(dim, heads)
        self.norm3 = Norm(dim)
        self.cross_attn = Attn(dim, heads)
        self.norm2 = Norm(dim, affine=False)
        if ffn_dtype is None:
            self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(approximate="tanh"), nn.Linear(ffn, dim))
        else:
            self.ffn = nn.Sequential(Cast(dim, ffn, ffn_dtype), nn.GELU(approximate="tanh"),
                                     Cast(ffn, dim, ffn_dtype))

    def forward(self, x: torch.Tensor, e: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        m = (self.modulation + e).chunk(6, dim=1)
        x = x + self.self_attn(self.norm1(x) * (1 + m[1]) + m[0]) * m[2]
        x = x + self.cross_attn(self.norm3(x), ctx)
        return x + self.ffn(self.norm2(x) * (1 + m[4]) + m[3]) * m[5]


class ToyDiT(nn.Module):
    def __init__(self, dim: int = 128, ffn: int = 256, heads: int = 2, layers: int = 3,
                 in_dim: int = 8) -> None:
        super().__init__()
        self.patch = nn.Linear(in_dim, dim)
        self.time = nn.Sequential(nn.Linear(32, dim), nn.SiLU(), nn.Linear(dim, 6 * dim))
        dtypes = [None, torch.bfloat16, None, None]
        self.blocks = nn.ModuleList(Block(dim, ffn, heads, dtypes[i % len(dtypes)]) for i in range(layers))
        self.head = nn.Linear(dim, in_dim)
        self.register_buffer("freqs", torch.linspace(0, 1, 16), persistent=False)  # computed, not stored

    def forward(self, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        tf = torch.cat([torch.sin(t[:, None] * self.freqs), torch.cos(t[:, None] * self.freqs)], dim=1)
        e = self.time(tf).view(-1, 6, self.patch.out_features)
        h = self.patch(x)
        for block in self.blocks:
            h = block(h, e, ctx)
        return self.head(h)


MIXED = {  # which linears get which scheme: three formats, and layers that stay high precision
    "blocks.0.self_attn.*": "int8-torch",
    "blocks.0.cross_attn.*": "fp8-torch",
    "blocks.0.ffn.*": "int4-g128-torch",
    "blocks.2.*_attn.[qkvo]": "int8-torch",
    "blocks.2.ffn.*": "fp8-torch",
}


def toy_model(layers: int = 3, mixed: bool = True, seed: int = 0, **kw) -> ToyDiT:
    torch.manual_seed(seed)
    model = ToyDiT(layers=layers, **kw).eval()
    if mixed:
        for pattern, scheme in MIXED.items():
            if int(pattern.split(".")[1]) < layers:
                quantize_model(model, scheme, [pattern])
    return model


def toy_inputs(seed: int = 1, dim_in: int = 8, dim: int = 128) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 16, dim_in, generator=g), torch.rand(1, generator=g) * 1000,
            torch.randn(1, 8, dim, generator=g))


def metaize(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose persistent tensors are on the meta device (built, not loaded)."""
    model = copy.deepcopy(model)
    for mod in model.modules():
        for container, is_param in ((mod._parameters, True), (mod._buffers, False)):
            for name, t in list(container.items()):
                if t is None or (not is_param and name in mod._non_persistent_buffers_set):
                    continue
                meta = torch.empty_like(t, device="meta")
                container[name] = nn.Parameter(meta, requires_grad=t.requires_grad) if is_param else meta
    return model
