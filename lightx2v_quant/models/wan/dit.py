"""The Wan DIT (diffusion transformer) of Wan2.1 / Wan2.2, computing what the official ``WanModel`` does.

Module names equal the official checkpoint keys (``blocks.N.self_attn.q``, ``blocks.N.norm3``,
``time_projection.1``, ``head.head``, ``img_emb.proj.0`` ...), so official state dicts load as they are.
Precision follows the official code: the residual stream, LayerNorm outputs, modulation, the time
embedding and the head are fp32; block matmuls and attention run in the run dtype (bf16 by default).
"""

from __future__ import annotations

import fnmatch
import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lightx2v_quant.attention.backends import LOWP_PV_FP8
from lightx2v_quant.models.wan import dit_fused
from lightx2v_quant.models.wan.attention import attention, get_backend, split_heads
from lightx2v_quant.models.wan.dit_config import WanDiTConfig
from lightx2v_quant.models.wan.rope import apply_rope, rope_tables
from lightx2v_quant.quant.activation import QuantizedActivation

# The linears that may be quantized (fnmatch patterns for ``lightx2v_quant.quant.apply.quantize_model``).
QUANTIZABLE: tuple[str, ...] = (
    "blocks.*.self_attn.q", "blocks.*.self_attn.k", "blocks.*.self_attn.v", "blocks.*.self_attn.o",
    "blocks.*.cross_attn.q", "blocks.*.cross_attn.k", "blocks.*.cross_attn.v", "blocks.*.cross_attn.o",
    "blocks.*.cross_attn.k_img", "blocks.*.cross_attn.v_img",
    "blocks.*.ffn.0", "blocks.*.ffn.2",
)
# Modules that always stay in high precision (never quantized).
HIGH_PRECISION: tuple[str, ...] = (
    "patch_embedding", "text_embedding.*", "time_embedding.*", "time_projection.*", "blocks.*.modulation",
    "blocks.*.self_attn.norm_q", "blocks.*.self_attn.norm_k", "blocks.*.norm3", "blocks.*.cross_attn.norm_q",
    "blocks.*.cross_attn.norm_k", "blocks.*.cross_attn.norm_k_img", "head.*", "img_emb.*",
)
# Parameters kept in fp32 with ``sensitive_fp32`` whatever the run dtype (LightX2V's sensitive-layer rule:
# norms, embeddings, modulation, time, head, img_emb.proj.0/.4).
SENSITIVE_FP32: tuple[str, ...] = (
    "patch_embedding.*", "text_embedding.*", "time_embedding.*", "time_projection.*", "*modulation",
    "*norm*", "head.*", "img_emb.proj.0.*", "img_emb.proj.4.*",
)


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """[N] timesteps -> [N, dim] fp32: [cos, sin] of t * 10000^(-i/half), computed in float64."""
    half = dim // 2
    pos = t.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device).div(half))
    s = torch.outer(pos, freqs)
    return torch.cat([torch.cos(s), torch.sin(s)], dim=1).float()


def fp32_linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """A linear computed in fp32 whatever the dtype its weights are stored in."""
    bias = layer.bias.float() if layer.bias is not None else None
    return F.linear(x.float(), layer.weight.float(), bias)


class WanRMSNorm(nn.Module):
    """RMSNorm over the last dim, statistics in fp32, then cast back and scaled by ``weight``."""

    def __init__(self, dim: int, eps: float, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).type_as(x) * self.weight


class WanLayerNorm(nn.Module):
    """LayerNorm computed in fp32 and cast back to the input dtype (affine or not)."""

    def __init__(self, dim: int, eps: float, affine: bool = False, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype)) if affine else None
        self.bias = nn.Parameter(torch.zeros(dim, dtype=dtype)) if affine else None
        # Fast path (models.wan.speed): (output dtype, per-token quant or None) of a fused Triton kernel.
        # It stays a forward of this module, so hooks on it (phase offload) still fire.
        self.fused_to: tuple[torch.dtype, str | None] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor | QuantizedActivation:
        if self.fused_to is not None:
            return dit_fused.layer_norm(self, x)
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), (self.dim,), w, b, self.eps).type_as(x)


class WanFFN(nn.Sequential):
    """Linear(dim -> ffn_dim), GELU(tanh), Linear(ffn_dim -> dim): an ``nn.Sequential`` (keys ffn.0, ffn.2)."""

    # Fast path (models.wan.speed): the per-token format ("fp8" / "int8") in which one fused Triton kernel
    # emits GELU(hidden) for the down projection, or None. It stays a forward of this module, so hooks on
    # it (phase offload) still fire before ffn.0 / ffn.2 read their weights.
    gelu_quant: str | None = None

    def forward(
        self,
        x: torch.Tensor | QuantizedActivation,
        residual: torch.Tensor | None = None,
        gate: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The FFN; with ``residual`` (where ``adds_into`` said yes): residual += FFN(x) * gate in place."""
        if self.gelu_quant is not None:
            return dit_fused.ffn_gelu_quant(self, x, residual, gate)
        if residual is not None:
            raise ValueError("WanFFN adds into a residual only on its fused GELU path (see adds_into)")
        return super().forward(x)

    def adds_into(self, residual: torch.Tensor, gate: torch.Tensor | None = None) -> bool:
        """Whether the down projection can add its output into ``residual`` (``QuantLinear.adds_into``)."""
        down = self[2]
        return self.gelu_quant is not None and hasattr(down, "adds_into") and down.adds_into(residual, gate)


class WanSelfAttention(nn.Module):
    """Self-attention over the video tokens with q/k RMSNorm (across all heads) and 3D RoPE."""

    def __init__(self, cfg: WanDiTConfig, dtype: torch.dtype) -> None:
        super().__init__()
        d = cfg.dim
        self.num_heads, self.run_dtype, self.attention_backend = cfg.num_heads, dtype, "sdpa"
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, dtype=dtype) for _ in range(4))
        self.norm_q = WanRMSNorm(d, cfg.eps, dtype) if cfg.qk_norm else nn.Identity()
        self.norm_k = WanRMSNorm(d, cfg.eps, dtype) if cfg.qk_norm else nn.Identity()
        self.fused = False  # fast path: dit_fused.self_attention (models.wan.speed turns it on)

    def forward(self, x: torch.Tensor | QuantizedActivation, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        if self.fused:
            return self.o(dit_fused.self_attention(self, x, rope))
        x = x if isinstance(x, QuantizedActivation) else x.to(self.run_dtype)
        q = split_heads(self.norm_q(self.q(x)), self.num_heads)  # RMSNorm across all heads, then split
        k = split_heads(self.norm_k(self.k(x)), self.num_heads)
        q = apply_rope(q, *rope).to(self.run_dtype)
        k = apply_rope(k, *rope).to(self.run_dtype)
        v = split_heads(self.v(x), self.num_heads)
        del x  # drop references as soon as possible: at 480p each of these is 0.3 GB
        out = attention(q, k, v.to(self.run_dtype), self.attention_backend)
        del q, k, v
        return self.o(out.flatten(2))


class WanCrossAttention(nn.Module):
    """Cross-attention to the text tokens; Wan2.1 I2V adds a separate attention to the CLIP image tokens
    (own k_img / v_img / norm_k_img, shared q and o) whose output is summed before ``o``."""

    def __init__(self, cfg: WanDiTConfig, dtype: torch.dtype) -> None:
        super().__init__()
        d = cfg.dim
        self.num_heads, self.run_dtype, self.attention_backend = cfg.num_heads, dtype, "sdpa"
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, dtype=dtype) for _ in range(4))
        self.norm_q = WanRMSNorm(d, cfg.eps, dtype) if cfg.qk_norm else nn.Identity()
        self.norm_k = WanRMSNorm(d, cfg.eps, dtype) if cfg.qk_norm else nn.Identity()
        self.fused = False  # q RMSNorm in place in one Triton kernel (models.wan.speed turns it on)
        self.has_image = cfg.i2v_image_attention
        if self.has_image:
            self.k_img, self.v_img = nn.Linear(d, d, dtype=dtype), nn.Linear(d, d, dtype=dtype)
            self.norm_k_img = WanRMSNorm(d, cfg.eps, dtype) if cfg.qk_norm else nn.Identity()

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        k, v = split_heads(k, self.num_heads).to(self.run_dtype), split_heads(v, self.num_heads).to(self.run_dtype)
        return attention(q, k, v, self.attention_backend).flatten(2)

    def forward(
        self, x: torch.Tensor | QuantizedActivation, context: torch.Tensor, context_img: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.o(self.attend_all(x, context, context_img))

    def attend_all(
        self, x: torch.Tensor | QuantizedActivation, context: torch.Tensor, context_img: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Everything but the output projection: [B, L, D] in the run dtype (the fused path projects it in
        chunks of tokens, dit_fused.cross_attn_phase)."""
        x = x if isinstance(x, QuantizedActivation) else x.to(self.run_dtype)
        context = context.to(self.run_dtype)
        if self.fused and self.attention_backend in LOWP_PV_FP8:
            attend = dit_fused.cross_attend_lowp(self, self.q(x))  # q normalized and quantized in one pass
        else:
            q = dit_fused.cross_q_norm(self, self.q(x)) if self.fused else self.norm_q(self.q(x))
            attend = functools.partial(self._attend, split_heads(q, self.num_heads).to(self.run_dtype))
            del q
        del x
        out = attend(self.norm_k(self.k(context)), self.v(context))
        if self.has_image:
            ci = context_img.to(self.run_dtype)
            out_img = attend(self.norm_k_img(self.k_img(ci)), self.v_img(ci))
            out = out.float() + out_img.float()  # summed in fp32 as the official code does
        del attend  # (and the q it holds)
        return out.to(self.run_dtype)


class WanAttentionBlock(nn.Module):
    """One DIT block. Offload moves it in three phases:
    (modulation + self_attn), (norm3 + cross_attn), (ffn)."""

    def __init__(self, cfg: WanDiTConfig, dtype: torch.dtype) -> None:
        super().__init__()
        d = cfg.dim
        self.run_dtype = dtype
        self.norm1 = WanLayerNorm(d, cfg.eps)  # no parameters
        self.self_attn = WanSelfAttention(cfg, dtype)
        # affine LayerNorm before cross-attention (diffusers calls it norm2)
        self.norm3 = (WanLayerNorm(d, cfg.eps, affine=True, dtype=dtype) if cfg.cross_attn_norm
                      else nn.Identity())
        self.cross_attn = WanCrossAttention(cfg, dtype)
        self.norm2 = WanLayerNorm(d, cfg.eps)  # no parameters
        self.ffn = WanFFN(nn.Linear(d, cfg.ffn_dim, dtype=dtype), nn.GELU(approximate="tanh"),
                          nn.Linear(cfg.ffn_dim, d, dtype=dtype))
        self.modulation = nn.Parameter(torch.randn(1, 6, d, dtype=dtype) / d**0.5)
        # Fast path (models.wan.speed): fused Triton norm / modulation / residual kernels, and per phase
        # (self-attn, cross-attn, FFN) the per-token format ("fp8" / "int8" / None) their input is emitted in.
        self.fused = False
        self.prequant: tuple[str | None, str | None, str | None] = (None, None, None)
        # dtype of the residual stream x between phases: fp32 as the official code (speed.residual=run_dtype
        # keeps it in the run dtype, as LightX2V's default and diffusers do: half its memory and traffic)
        self.residual_dtype = torch.float32
        # tokens per chunk of the output projections and the FFN on the fused path (speed.token_chunk;
        # 0: all at once): bounds the activation memory those add to the residual stream
        self.token_chunk = dit_fused.TOKEN_CHUNK
        # the fused path adds an output projection into the stream in its GEMM's epilogue where the layer's
        # kernel can (speed: configure_dit(fuse_residual=...)); otherwise a separate fused add
        self.fuse_residual = True

    def modulation_terms(self, e0: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """e0 [B, Lt, 6, D] fp32 -> six fp32 [B, Lt, D]: shift/scale/gate of self-attn, then of the FFN."""
        return (self.modulation.unsqueeze(0) + e0).float().unbind(2)

    def run_self_attn(self, x: torch.Tensor, mod: Sequence[torch.Tensor], rope) -> torch.Tensor:
        if self.fused:
            return dit_fused.self_attn_phase(self, x, mod, rope)
        shift, scale, gate = mod[0], mod[1], mod[2]
        y = self.self_attn(self.norm1(x).float() * (1 + scale) + shift, rope)
        return (x + y * gate).to(self.residual_dtype)  # fp32 (official): the stream is fp32 from here on

    def run_cross_attn(
        self, x: torch.Tensor, context: torch.Tensor, context_img: torch.Tensor | None
    ) -> torch.Tensor:
        if self.fused:
            return dit_fused.cross_attn_phase(self, x, context, context_img)
        return (x + self.cross_attn(self.norm3(x), context, context_img)).to(self.residual_dtype)  # no gate

    def run_ffn(self, x: torch.Tensor, mod: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.fused:
            return dit_fused.ffn_phase(self, x, mod)
        shift, scale, gate = mod[3], mod[4], mod[5]
        y = self.ffn((self.norm2(x).float() * (1 + scale) + shift).to(self.run_dtype))
        return (x + y * gate).to(self.residual_dtype)

    def forward(self, x: torch.Tensor, e0: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                context: torch.Tensor, context_img: torch.Tensor | None = None) -> torch.Tensor:
        # x [B, L, D]; e0 [B, Lt, 6, D] fp32 (Lt = 1, or L with per-token timesteps)
        mod = self.modulation_terms(e0)
        if self.fused:  # the phases update the residual stream in place
            x = dit_fused.residual_stream(self, x)
        # 1. self-attention
        x = self.run_self_attn(x, mod, rope)
        # 2. cross-attention
        x = self.run_cross_attn(x, context, context_img)
        # 3. FFN
        return self.run_ffn(x, mod)


class WanHead(nn.Module):
    """Output head, entirely in fp32; modulated by ``e`` (the time embedding, not ``e0``)."""

    def __init__(self, cfg: WanDiTConfig, dtype: torch.dtype) -> None:
        super().__init__()
        d = cfg.dim
        self.norm = WanLayerNorm(d, cfg.eps)  # no parameters
        self.head = nn.Linear(d, cfg.out_dim * math.prod(cfg.patch_size), dtype=dtype)
        self.modulation = nn.Parameter(torch.randn(1, 2, d, dtype=dtype) / d**0.5)
        self.fused = False  # fast path: the norm and modulation in one Triton pass (models.wan.speed)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.modulation.unsqueeze(0) + e.unsqueeze(2)).float().unbind(2)  # [B, Lt, D]
        if self.fused:
            return fp32_linear(self.head, dit_fused.head_norm(self, x, shift, scale))
        return fp32_linear(self.head, self.norm(x).float() * (1 + scale) + shift)


class WanImageEmbedding(nn.Module):
    """Official ``MLPProj``: CLIP features [B, 257, image_dim] -> [B, 257, D]; LayerNorms in fp32."""

    def __init__(self, image_dim: int, dim: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.LayerNorm(image_dim, dtype=dtype), nn.Linear(image_dim, image_dim, dtype=dtype), nn.GELU(),
            nn.Linear(image_dim, dim, dtype=dtype), nn.LayerNorm(dim, dtype=dtype),
        )

    @staticmethod
    def _ln(ln: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), ln.normalized_shape, ln.weight.float(), ln.bias.float(), ln.eps)

    def forward(self, clip_fea: torch.Tensor) -> torch.Tensor:
        ln0, fc1, act, fc2, ln4 = self.proj
        h = self._ln(ln0, clip_fea).to(fc1.weight.dtype)
        return self._ln(ln4, fc2(act(fc1(h))))


class WanDiT(nn.Module):
    """Wan DIT: ``forward(x, t, context, clip_fea=None, y=None) -> [B, out_dim, F, H, W]`` (fp32).

    ``dtype`` is the run dtype of the block matmuls and attention (fixed at construction; build a new
    model for another dtype). ``sensitive_fp32`` keeps the ``SENSITIVE_FP32`` parameters in fp32.
    """

    def __init__(self, cfg: WanDiTConfig, *, dtype: torch.dtype | None = None, sensitive_fp32: bool = False,
                 attention_backend: str = "sdpa") -> None:
        super().__init__()
        if not isinstance(cfg, WanDiTConfig):
            raise TypeError(f"WanDiT needs a WanDiTConfig, got {type(cfg).__name__}")
        dtype = dtype or torch.get_default_dtype()
        self.cfg, self.run_dtype = cfg, dtype
        d = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, d, kernel_size=cfg.patch_size, stride=cfg.patch_size,
                                         dtype=dtype)
        self.text_embedding = nn.Sequential(
            nn.Linear(cfg.text_dim, d, dtype=dtype), nn.GELU(approximate="tanh"), nn.Linear(d, d, dtype=dtype)
        )
        self.time_embedding = nn.Sequential(
            nn.Linear(cfg.freq_dim, d, dtype=dtype), nn.SiLU(), nn.Linear(d, d, dtype=dtype)
        )
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d, dtype=dtype))
        self.blocks = nn.ModuleList(WanAttentionBlock(cfg, dtype) for _ in range(cfg.num_layers))
        self.head = WanHead(cfg, dtype)
        if cfg.image_dim is not None:
            self.img_emb = WanImageEmbedding(cfg.image_dim, d, dtype)
        if sensitive_fp32:
            keep_fp32(self, SENSITIVE_FP32)
        self.attention_backend = attention_backend

    # -- attention backend ----------------------------------------------------------------------
    @property
    def attention_backend(self) -> str:
        return self._attention_backend

    @attention_backend.setter
    def attention_backend(self, name: str) -> None:
        get_backend(name)  # unknown name: one error listing the backends
        self._attention_backend = name
        for m in self.modules():
            if isinstance(m, (WanSelfAttention, WanCrossAttention)):
                m.attention_backend = name

    # -- forward pieces -------------------------------------------------------------------------
    def time_embed(self, t: torch.Tensor | float, batch: int, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """t [B] or [B, L] -> e [B, Lt, D] and e0 [B, Lt, 6, D], both fp32 (Lt = 1 or L)."""
        t = torch.as_tensor(t, device=self.time_embedding[0].weight.device)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.ndim == 1:
            t = t[:, None]
        if t.ndim != 2 or t.shape[0] != batch or t.shape[1] not in (1, tokens):
            raise ValueError(f"timesteps must be [B] or [B, L] with B={batch}, L={tokens} tokens; "
                             f"got {list(t.shape)}")
        emb = sinusoidal_embedding(self.cfg.freq_dim, t.flatten()).unflatten(0, t.shape)  # [B, Lt, freq]
        lin1, act, lin2 = self.time_embedding
        e = fp32_linear(lin2, act(fp32_linear(lin1, emb)))
        e0 = fp32_linear(self.time_projection[1], self.time_projection[0](e)).unflatten(-1, (6, self.cfg.dim))
        return e, e0

    def embed_text(self, context: torch.Tensor | Sequence[torch.Tensor], batch: int) -> torch.Tensor:
        """Zero-pad the text embeddings to text_len (as the official model does) and project them:
        [B, text_len, D]."""
        c = self.cfg
        if isinstance(context, (list, tuple)):
            rows = list(context)
            for i, u in enumerate(rows):
                if u.ndim != 2 or u.shape[0] > c.text_len or u.shape[1] != c.text_dim:
                    raise ValueError(
                        f"context[{i}] must be [L <= {c.text_len}, {c.text_dim}], got {list(u.shape)}"
                    )
            context = torch.stack([F.pad(u, (0, 0, 0, c.text_len - u.shape[0])) for u in rows])
        if context.ndim != 3 or context.shape[0] != batch or context.shape[2] != c.text_dim \
                or context.shape[1] > c.text_len:
            raise ValueError(f"context must be [B={batch}, L <= {c.text_len}, {c.text_dim}] (or a list of "
                             f"[L_i, {c.text_dim}]), got {list(context.shape)}")
        context = F.pad(context, (0, 0, 0, c.text_len - context.shape[1]))
        w = self.text_embedding[0].weight
        return self.text_embedding(context.to(w.dtype))

    def unpatchify(self, out: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """[B, L, pt*ph*pw*C] -> [B, C, F, H, W] (token order (f, h, w), channels last per patch)."""
        (f, h, w), (pt, ph, pw) = grid, self.cfg.patch_size
        u = out.reshape(out.shape[0], f, h, w, pt, ph, pw, self.cfg.out_dim)
        u = u.permute(0, 7, 1, 4, 2, 5, 3, 6)  # [B, C, f, pt, h, ph, w, pw]
        return u.reshape(out.shape[0], self.cfg.out_dim, f * pt, h * ph, w * pw)

    def _check_inputs(self, x: torch.Tensor, clip_fea: torch.Tensor | None) -> None:
        c = self.cfg
        if x.ndim != 5 or x.shape[1] != c.in_dim:
            raise ValueError(f"x (with y concatenated) must be [B, {c.in_dim}, F, H, W], got {list(x.shape)}"
                             + ("; I2V models take the conditioning as y" if c.in_dim > x.shape[1] else ""))
        if any(s % p for s, p in zip(x.shape[2:], c.patch_size)):
            raise ValueError(
                f"latent size {list(x.shape[2:])} must be divisible by patch_size {list(c.patch_size)}"
            )
        if c.image_dim is None and clip_fea is not None:
            raise ValueError("this DIT has no image attention (image_dim=None): pass clip_fea=None")
        if c.image_dim is not None:
            if clip_fea is None:
                raise ValueError(
                    f"this DIT attends to CLIP image tokens: pass clip_fea [B, 257, {c.image_dim}]"
                )
            if clip_fea.ndim != 3 or clip_fea.shape[0] != x.shape[0] or clip_fea.shape[2] != c.image_dim:
                raise ValueError(
                    f"clip_fea must be [B={x.shape[0]}, N, {c.image_dim}], got {list(clip_fea.shape)}"
                )

    # -- forward --------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, t: torch.Tensor | float, context: torch.Tensor | Sequence[torch.Tensor],
                clip_fea: torch.Tensor | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, C, F, H, W] latents, t [B] (or [B, L] per token), context [B, L<=text_len, text_dim] or
        a list of [L_i, text_dim]; I2V: y [B, Cy, F, H, W] (channel-concatenated to x) and/or clip_fea
        [B, 257, image_dim]."""
        if y is not None:
            x = torch.cat([x, y.to(x.dtype)], dim=1)
        self._check_inputs(x, clip_fea)
        batch = x.shape[0]
        # 1. patchify: [B, D, f, h, w] -> tokens [B, L, D] in (f, h, w) order
        x = self.patch_embedding(x.to(self.patch_embedding.weight.dtype))
        grid = tuple(x.shape[2:])
        x = x.flatten(2).transpose(1, 2).contiguous()
        # 2. conditioning: time (fp32), text, image
        e, e0 = self.time_embed(t, batch, x.shape[1])
        context = self.embed_text(context, batch)
        context_img = self.img_emb(clip_fea) if self.cfg.image_dim is not None else None
        # 3. blocks; RoPE angles in float64, rotation in float64 for fp32 runs and fp32 otherwise
        rope_dtype = torch.float64 if self.run_dtype == torch.float32 else torch.float32
        rope = rope_tables(grid, self.cfg.head_dim, x.device, rope_dtype)
        if self.blocks and self.blocks[0].fused:  # the stream the fused blocks update in place (and the only
            x = dit_fused.residual_stream(self.blocks[0], x)  # reference: a run-dtype copy is freed here)
        for block in self.blocks:
            x = block(x, e0, rope, context, context_img)
        # 4. head (fp32) and unpatchify
        return self.unpatchify(self.head(x, e), grid)


def keep_fp32(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Turn the parameters whose names match ``patterns`` into fp32 (works on meta too); return the names."""
    names = []
    for name, p in list(model.named_parameters()):
        if any(fnmatch.fnmatchcase(name, pat) for pat in patterns) and p.dtype != torch.float32:
            prefix, _, leaf = name.rpartition(".")
            module = model.get_submodule(prefix) if prefix else model
            setattr(module, leaf, nn.Parameter(p.detach().float(), requires_grad=p.requires_grad))
            names.append(name)
    return names
