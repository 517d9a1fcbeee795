"""Tokenizers for the umT5 text encoder: the real ``google/umt5-xxl`` one from the model folder, and a
byte-level one for tiny test models. Both clean text like Wan2.1, pad to a fixed length and append EOS.

Both are called as ``tok(texts) -> Tokens(ids [B, L] int64, mask [B, L] int64)``.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import NamedTuple, Protocol

import torch

UMT5_TOKENIZER_SUBDIR = "google/umt5-xxl"  # where the official Wan2.1 release keeps the tokenizer
TEXT_LEN = 512  # tokens per prompt, padding included (Wan2.1 text_len)


class TokenizerError(FileNotFoundError):
    """The tokenizer files are missing or unusable; the message names the folder and the fix."""


class Tokens(NamedTuple):
    ids: torch.Tensor  # [B, L] int64
    mask: torch.Tensor  # [B, L] int64, 1 = real token (incl. EOS), 0 = padding


class Tokenizer(Protocol):
    seq_len: int
    vocab_size: int
    pad_id: int
    eos_id: int

    def __call__(self, texts: list[str]) -> Tokens: ...


def clean_text(text: str, *, fix_unicode: bool = True) -> str:
    """Wan2.1's ``clean='whitespace'``: ftfy.fix_text -> html.unescape twice -> strip -> collapse whitespace."""
    if fix_unicode:
        try:
            import ftfy
        except ImportError as exc:
            raise ImportError(
                "the umT5 tokenizer cleans text with ftfy like the official code; install it: "
                "pip install ftfy (or the project's [text] extra)"
            ) from exc
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def _as_list(texts: str | list[str]) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("the tokenizer takes a string or a list of strings")
    return list(texts)


def umt5_tokenizer_dir(model_path: str | Path) -> Path:
    """The tokenizer folder inside a Wan2.1 model folder: ``<model_path>/google/umt5-xxl``."""
    return Path(model_path) / UMT5_TOKENIZER_SUBDIR


class UMT5Tokenizer:
    """The official umT5 tokenizer (transformers ``AutoTokenizer``), read from local files only.

    ``path`` is the tokenizer folder itself (``<model folder>/google/umt5-xxl``, holding
    ``tokenizer.json`` or ``spiece.model`` with ``tokenizer_config.json``); see ``from_model_folder``.
    Nothing is ever downloaded.
    """

    def __init__(self, path: str | Path, seq_len: int = TEXT_LEN) -> None:
        path = Path(path)
        if not path.is_dir():
            raise TokenizerError(
                f"umT5 tokenizer folder {path} does not exist. The Wan2.1 model folder must contain "
                f"{UMT5_TOKENIZER_SUBDIR}/ (tokenizer.json or spiece.model, tokenizer_config.json) as in the "
                "official release; it is never downloaded"
            )
        try:
            from transformers import AutoTokenizer
        except ImportError as exc:
            raise ImportError("the umT5 tokenizer needs transformers: pip install transformers sentencepiece") from exc
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception as exc:  # transformers raises several types for missing / broken files
            raise TokenizerError(
                f"cannot load the umT5 tokenizer from {path} ({type(exc).__name__}: {exc}). The folder needs "
                "tokenizer.json or spiece.model plus tokenizer_config.json from google/umt5-xxl"
            ) from exc
        self.path = path
        self.seq_len = seq_len
        self.vocab_size = len(self.tokenizer)
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.eos_id = int(self.tokenizer.eos_token_id)

    @classmethod
    def from_model_folder(cls, model_path: str | Path, seq_len: int = TEXT_LEN) -> UMT5Tokenizer:
        return cls(umt5_tokenizer_dir(model_path), seq_len)

    def __call__(self, texts: str | list[str]) -> Tokens:
        cleaned = [clean_text(t) for t in _as_list(texts)]
        out = self.tokenizer(
            cleaned,
            padding="max_length",
            truncation=True,
            max_length=self.seq_len,
            add_special_tokens=True,  # appends </s>
            return_tensors="pt",
        )
        return Tokens(out.input_ids.long(), out.attention_mask.long())


class ByteTokenizer:
    """Deterministic byte-level tokenizer for tiny models: no files, no download.

    ids: 0 = pad, 1 = EOS, 2 = unused (unk), 3 + b for each UTF-8 byte b. Cleaning is the official one
    minus ftfy (so the tiny pipeline needs no extra package). Truncation keeps the EOS, as transformers does.
    """

    PAD, EOS, OFFSET = 0, 1, 3
    vocab_size = 3 + 256

    def __init__(self, seq_len: int = TEXT_LEN) -> None:
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.seq_len = seq_len
        self.pad_id = self.PAD
        self.eos_id = self.EOS

    def __call__(self, texts: str | list[str]) -> Tokens:
        texts = _as_list(texts)
        ids = torch.full((len(texts), self.seq_len), self.PAD, dtype=torch.long)
        mask = torch.zeros((len(texts), self.seq_len), dtype=torch.long)
        for i, text in enumerate(texts):
            data = clean_text(text, fix_unicode=False).encode("utf-8")[: self.seq_len - 1]
            row = [b + self.OFFSET for b in data] + [self.EOS]
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return Tokens(ids, mask)
