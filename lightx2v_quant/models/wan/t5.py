"""umT5-XXL text encoder of Wan2.1 (encoder only), computing what the official ``wan/modules/t5.py`` does.

Module names equal the keys of ``models_t5_umt5-xxl-enc-bf16.pth`` (``token_embedding``,
``blocks.N.{norm1,attn.{q,k,v,o},norm2,ffn.{gate.0,fc1,fc2},pos_embedding.embedding}``, ``norm``), so
the official file and LightX2V's quantized T5 files load without a key map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

# The linears that may be quantized (fnmatch patterns for quant.apply.quantize_model). Everything else
# (token embedding, RMS norms, relative position tables) stays in the run dtype.
T5_QUANTIZABLE: tuple[str, ...] = (
    "blocks.*.attn.q",
    "blocks.*.attn.k",
    "blocks.*.attn.v",
    "blocks.*.attn.o",
    "blocks.*.ffn.gate.0",
    "blocks.*.ffn.fc1",
    "blocks.*.ffn.fc2",
)


@dataclass(frozen=True)
class T5Config:
    """Architecture of the umT5 encoder. Defaults: umT5-XXL as shipped with Wan2.1."""

    vocab_size: int = 256384
    dim: int = 4096
    dim_attn: int = 4096  # q/k/v width = num_heads * head_dim
    dim_ffn: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32  # relative-position buckets per layer (16 per direction)
    max_dist: int = 128  # distances >= max_dist share the last bucket
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.dim_attn % self.num_heads:
            raise ValueError(f"T5Config: dim_attn {self.dim_attn} is not a multiple of num_heads {self.num_heads}")
        if self.num_buckets % 4 or self.num_buckets < 4:
            raise ValueError(f"T5Config: num_buckets must be a positive multiple of 4, got {self.num_buckets}")
        if self.max_dist <= self.num_buckets // 4:
            raise ValueError(f"T5Config: max_dist {self.max_dist} must exceed num_buckets/4")

    @property
    def head_dim(self) -> int:
        return self.dim_attn // self.num_heads

    def linear_shapes(self) -> set[tuple[int, int]]:
        """(out_features, in_features) of the quantizable linears (for launch-time kernel checks)."""
        d, a, f = self.dim, self.dim_attn, self.dim_ffn
        return {(a, d), (d, a), (f, d), (d, f)}

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> T5Config:
        """Build from a dict / DictConfig (e.g. ``cfg.model.t5``); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown T5 architecture key(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(values))

    @classmethod
    def preset(cls, name: str) -> T5Config:
        try:
            return T5_PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown T5 preset {name!r}; presets: {', '.join(T5_PRESETS)}") from None


UMT5_XXL = T5Config()
# Tiny test model; vocab covers the byte tokenizer (259 ids).
T5_TINY = T5Config(vocab_size=384, dim=256, dim_attn=256, dim_ffn=512, num_heads=4, num_layers=2)
T5_PRESETS: dict[str, T5Config] = {"umt5-xxl": UMT5_XXL, "tiny": T5_TINY}


def _fp16_clamp(x: torch.Tensor) -> torch.Tensor:
    """As the official code: in fp16, pull infinities back to the largest finite value (minus a margin)."""
    if x.dtype == torch.float16 and torch.isinf(x).any():
        limit = torch.finfo(x.dtype).max - 1000
        x = x.clamp(-limit, limit)
    return x


def relative_position_buckets(length: int, num_buckets: int, max_dist: int, device: torch.device) -> torch.Tensor:
    """Bidirectional T5 buckets [L, L] for rel = key_pos - query_pos.

    Half of the buckets are for rel > 0. Within a half: |rel| < n/2 exact, larger |rel| on a log scale up
    to ``max_dist``, clipped to the last bucket (n = buckets per half).
    """
    pos = torch.arange(length, device=device)
    rel = pos[None, :] - pos[:, None]
    half = num_buckets // 2
    buckets = (rel > 0).long() * half
    rel = rel.abs()
    exact = half // 2
    # log(0) = -inf for rel == 0 is discarded by the where() below
    large = exact + (torch.log(rel.float() / exact) / math.log(max_dist / exact) * (half - exact)).long()
    large = large.clamp(max=half - 1)
    return buckets + torch.where(rel < exact, rel, large)


class T5LayerNorm(nn.Module):
    """T5 RMS norm: no mean, no bias; statistics in fp32, result cast to the weight's dtype."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            y = y.type_as(self.weight)
        return self.weight * y


class T5RelativeEmbedding(nn.Module):
    """One layer's relative position bias table: bucket -> per-head bias."""

    def __init__(self, num_buckets: int, num_heads: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def forward(self, buckets: torch.Tensor) -> torch.Tensor:
        return self.embedding(buckets).permute(2, 0, 1).unsqueeze(0)  # [L,L] -> [1, heads, L, L]


class T5Attention(nn.Module):
    """Self-attention WITHOUT 1/sqrt(d) scaling (T5), with an additive relative bias and a key mask."""

    def __init__(self, dim: int, dim_attn: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim_attn // num_heads
        self.q = nn.Linear(dim, dim_attn, bias=False)
        self.k = nn.Linear(dim, dim_attn, bias=False)
        self.v = nn.Linear(dim, dim_attn, bias=False)
        self.o = nn.Linear(dim_attn, dim, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, pos_bias: torch.Tensor) -> torch.Tensor:
        b, n, h, d = x.shape[0], x.shape[1], self.num_heads, self.head_dim
        q = self.q(x).view(b, n, h, d).transpose(1, 2)  # [B, H, L, D]
        k = self.k(x).view(b, n, h, d).transpose(1, 2)
        v = self.v(x).view(b, n, h, d).transpose(1, 2)
        bias = pos_bias.to(x.dtype).expand(b, h, n, n)
        if mask is not None:
            # padded keys get the dtype minimum (replacing the position bias, as the official code does)
            bias = bias.masked_fill(mask.view(b, 1, 1, n) == 0, torch.finfo(x.dtype).min)
        logits = torch.matmul(q, k.transpose(-1, -2)) + bias
        probs = F.softmax(logits.float(), dim=-1).type_as(logits)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(b, n, h * d)
        return self.o(out)


class T5FeedForward(nn.Module):
    """Gated GELU(tanh) FFN: ``fc2(fc1(x) * gelu_tanh(gate.0(x)))``."""

    def __init__(self, dim: int, dim_ffn: int) -> None:
        super().__init__()
        # F.gelu(tanh) is the official closed form computed in one fused op (fp32 internally)
        self.gate = nn.Sequential(nn.Linear(dim, dim_ffn, bias=False), nn.GELU(approximate="tanh"))
        self.fc1 = nn.Linear(dim, dim_ffn, bias=False)
        self.fc2 = nn.Linear(dim_ffn, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x) * self.gate(x))


class T5Block(nn.Module):
    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.norm1 = T5LayerNorm(cfg.dim, cfg.eps)
        self.attn = T5Attention(cfg.dim, cfg.dim_attn, cfg.num_heads)
        self.norm2 = T5LayerNorm(cfg.dim, cfg.eps)
        self.ffn = T5FeedForward(cfg.dim, cfg.dim_ffn)
        self.pos_embedding = T5RelativeEmbedding(cfg.num_buckets, cfg.num_heads)  # shared_pos=False

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, buckets: torch.Tensor) -> torch.Tensor:
        x = _fp16_clamp(x + self.attn(self.norm1(x), mask, self.pos_embedding(buckets)))
        x = _fp16_clamp(x + self.ffn(self.norm2(x)))
        return x


class T5Encoder(nn.Module):
    """umT5 encoder: ``T5Encoder(cfg)(ids [B, L], mask [B, L]) -> [B, L, dim]``.

    ``mask`` is 1 for real tokens (incl. EOS) and 0 for padding; padded keys are excluded from attention.
    Outputs at padded positions are computed but meaningless (the official code trims them).
    """

    def __init__(self, cfg: T5Config = UMT5_XXL) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(T5Block(cfg) for _ in range(cfg.num_layers))
        self.norm = T5LayerNorm(cfg.dim, cfg.eps)

    @property
    def dtype(self) -> torch.dtype:
        return self.token_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.token_embedding.weight.device

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if ids.ndim != 2:
            raise ValueError(f"T5Encoder expects token ids [B, L], got shape {list(ids.shape)}")
        if mask is not None and mask.shape != ids.shape:
            raise ValueError(f"T5Encoder: mask {list(mask.shape)} must have the shape of ids {list(ids.shape)}")
        x = self.token_embedding(ids)
        buckets = relative_position_buckets(ids.shape[1], self.cfg.num_buckets, self.cfg.max_dist, ids.device)
        for block in self.blocks:
            x = block(x, mask, buckets)
        return self.norm(x)
