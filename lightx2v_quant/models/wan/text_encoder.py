"""Prompts -> umT5 embeddings as the Wan DIT consumes them: tokenizer + T5Encoder, trimmed per prompt,
then zero-padded to ``text_len`` (512) for the DIT."""

from __future__ import annotations

import torch

from lightx2v_quant.models.wan.t5 import T5Encoder
from lightx2v_quant.models.wan.tokenizer import Tokenizer


class TextEncoder:
    """``TextEncoder(model, tokenizer).encode(prompts) -> list of [L_i, dim]`` (L_i = tokens incl. EOS).

    By default the encoder runs on the batch's longest prompt instead of all ``seq_len`` slots. This is
    the same function as the official full-length run: padded keys are masked out (their softmax weight
    is exactly 0) and the relative bias depends only on distances, so outputs at real tokens do not
    depend on how much padding follows. ``full_length=True`` runs the official 512-slot shape anyway.
    """

    def __init__(self, model: T5Encoder, tokenizer: Tokenizer, *, full_length: bool = False) -> None:
        if tokenizer.vocab_size > model.cfg.vocab_size:
            raise ValueError(
                f"tokenizer has {tokenizer.vocab_size} ids but the T5 embedding only {model.cfg.vocab_size}: "
                "the tokenizer does not belong to this model (tiny models use ByteTokenizer)"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.full_length = full_length

    @property
    def dim(self) -> int:
        return self.model.cfg.dim

    @torch.no_grad()
    def encode(self, prompts: str | list[str]) -> list[torch.Tensor]:
        ids, mask = self.tokenizer(prompts)
        lengths = mask.sum(dim=1).tolist()  # tokens incl. EOS, per prompt
        if not self.full_length:
            keep = max(lengths)
            ids, mask = ids[:, :keep], mask[:, :keep]
        device = self.model.device
        out = self.model(ids.to(device), mask.to(device))  # [B, L, dim]
        return [u[:n] for u, n in zip(out, lengths)]


def pad_context(contexts: list[torch.Tensor], text_len: int = 512) -> torch.Tensor:
    """Stack per-prompt embeddings [L_i, dim] into [B, text_len, dim] with zero rows after each prompt
    (what the official DIT does before its text embedding)."""
    if not contexts:
        raise ValueError("pad_context needs at least one embedding")
    dim = contexts[0].shape[-1]
    out = contexts[0].new_zeros(len(contexts), text_len, dim)
    for i, u in enumerate(contexts):
        if u.ndim != 2 or u.shape[-1] != dim:
            raise ValueError(f"context {i} has shape {list(u.shape)}; expected [L, {dim}]")
        if u.shape[0] > text_len:
            raise ValueError(f"context {i} has {u.shape[0]} tokens, more than text_len {text_len}")
        out[i, : u.shape[0]] = u
    return out
