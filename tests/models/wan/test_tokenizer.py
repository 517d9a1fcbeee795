"""Tokenizers: official text cleaning, the byte tokenizer, and the umT5 tokenizer read from a model folder."""

import pytest
import torch

from lightx2v_quant.models.wan import ByteTokenizer, TokenizerError, UMT5Tokenizer
from lightx2v_quant.models.wan.tokenizer import clean_text, umt5_tokenizer_dir


def test_clean_text_follows_the_official_steps():
    assert clean_text("  a  &amp;amp; b\n\t c  ") == "a & b c"  # html unescaped twice, whitespace collapsed
    assert clean_text("caf\u00c3\u00a9") == "caf\u00e9"  # ftfy repairs mojibake
    assert clean_text("caf\u00c3\u00a9", fix_unicode=False) == "caf\u00c3\u00a9"


def test_byte_tokenizer_pads_appends_eos_and_truncates_keeping_eos():
    tok = ByteTokenizer(seq_len=8)
    ids, mask = tok(["ab", " a  b ", "abcdefghijkl"])
    assert ids.dtype == torch.long and ids.shape == (3, 8)
    assert ids[0].tolist() == [ord("a") + 3, ord("b") + 3, 1, 0, 0, 0, 0, 0]
    assert mask[0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert ids[1, :4].tolist() == [ord("a") + 3, ord(" ") + 3, ord("b") + 3, 1]  # cleaned to "a b"
    assert ids[2].tolist() == [ord(c) + 3 for c in "abcdefg"] + [1]
    assert mask[2].all()
    assert int(ids.max()) < ByteTokenizer.vocab_size
    assert torch.equal(tok("ab").ids, ids[:1])  # a single string is a batch of one


def _tiny_umt5_folder(root):
    """A tiny T5 (unigram) tokenizer saved like google/umt5-xxl inside a model folder; no download."""
    transformers = pytest.importorskip("transformers")
    pieces = list("abcdefghijklmnopqrstuvwxyz&;") + ["\u2581", "\u2581a", "\u2581the", "the", "ca", "at", "\u2581cat"]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(p, -float(i)) for i, p in enumerate(pieces)]
    tok = transformers.T5Tokenizer(vocab=vocab, extra_ids=0)
    tok.save_pretrained(str(umt5_tokenizer_dir(root)))
    return transformers.AutoTokenizer.from_pretrained(str(umt5_tokenizer_dir(root)), local_files_only=True)


def test_umt5_tokenizer_from_model_folder(tmp_path):
    ref = _tiny_umt5_folder(tmp_path)
    tok = UMT5Tokenizer.from_model_folder(tmp_path, seq_len=10)
    assert (tok.pad_id, tok.eos_id) == (0, 1)
    ids, mask = tok(["  the  cat &amp;amp; a cat\n", "a"])
    expected = ref(["the cat & a cat", "a"], padding="max_length", truncation=True, max_length=10,
                   add_special_tokens=True, return_tensors="pt")
    assert torch.equal(ids, expected.input_ids) and torch.equal(mask, expected.attention_mask)
    assert ids.shape == (2, 10)
    n = int(mask[1].sum())
    assert ids[1, n - 1] == 1 and not ids[1, n:].any()  # EOS, then pad id 0
    long_ids, long_mask = tok(["the cat " * 20])
    assert long_mask.all() and long_ids[0, -1] == 1  # truncated to 10, EOS kept


def test_umt5_tokenizer_missing_folder_names_it(tmp_path):
    with pytest.raises(TokenizerError, match=r"google/umt5-xxl.*never downloaded"):
        UMT5Tokenizer.from_model_folder(tmp_path / "Wan2.1-T2V-14B")
    bad = umt5_tokenizer_dir(tmp_path)
    bad.mkdir(parents=True)
    with pytest.raises(TokenizerError, match="cannot load the umT5 tokenizer from"):
        UMT5Tokenizer(bad)
