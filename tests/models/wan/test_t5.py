"""umT5 encoder: parity with transformers' UMT5EncoderModel, relative buckets, key map, TextEncoder."""

import pytest
import torch

from lightx2v_quant.models.wan import T5_TINY, ByteTokenizer, T5Config, T5Encoder, TextEncoder, pad_context, random_t5
from lightx2v_quant.models.wan.keymap_encoders import t5_key_from_hf, t5_state_dict_from_hf
from lightx2v_quant.models.wan.t5 import relative_position_buckets

transformers = pytest.importorskip("transformers")


def _hf_umt5(cfg: T5Config):
    hf_cfg = transformers.UMT5Config(
        vocab_size=cfg.vocab_size, d_model=cfg.dim, d_kv=cfg.head_dim, d_ff=cfg.dim_ffn, num_layers=cfg.num_layers,
        num_heads=cfg.num_heads, relative_attention_num_buckets=cfg.num_buckets,
        relative_attention_max_distance=cfg.max_dist, feed_forward_proj="gated-gelu", layer_norm_epsilon=cfg.eps,
        dropout_rate=0.0,
    )
    hf_cfg._attn_implementation = "eager"
    model = transformers.UMT5EncoderModel(hf_cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # every tensor random (norms too), so a swapped key cannot go unnoticed
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("SelfAttention.q.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * (cfg.dim * cfg.head_dim) ** -0.5)
            elif p.ndim == 2 and "embed" not in name and "shared" not in name and "relative" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[1] ** -0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g))
    return model


def _ours_from_hf(hf, cfg: T5Config) -> T5Encoder:
    ours = T5Encoder(cfg).eval()
    ours.load_state_dict(t5_state_dict_from_hf(hf.state_dict()), strict=True)
    return ours


def _ids_and_mask(cfg: T5Config, lengths: list[int], seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.zeros(len(lengths), seq, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(2, cfg.vocab_size, (n,))
        ids[i, n - 1] = 1  # EOS
        mask[i, :n] = 1
    return ids, mask


def test_t5_matches_transformers_umt5_with_padding_mask():
    # 300 tokens: relative distances beyond max_dist (128) reach the last log bucket
    cfg = T5_TINY
    hf = _hf_umt5(cfg)
    ours = _ours_from_hf(hf, cfg)
    ids, mask = _ids_and_mask(cfg, [300, 17], seq=300)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        out = ours(ids, mask)
    assert out.shape == (2, 300, cfg.dim)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_t5_matches_transformers_without_mask():
    cfg = T5Config(vocab_size=64, dim=64, dim_attn=96, dim_ffn=128, num_heads=3, num_layers=3, num_buckets=8,
                   max_dist=20)  # dim_attn != dim, other bucket settings
    hf = _hf_umt5(cfg)
    ours = _ours_from_hf(hf, cfg)
    ids = torch.randint(0, cfg.vocab_size, (1, 50))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(input_ids=ids).last_hidden_state, rtol=1e-5, atol=1e-5)


def test_relative_buckets_match_transformers():
    hf = _hf_umt5(T5_TINY)
    attn = hf.encoder.block[0].layer[0].SelfAttention
    pos = torch.arange(400)
    ref = attn._relative_position_bucket(pos[None, :] - pos[:, None])
    ours = relative_position_buckets(400, 32, 128, torch.device("cpu"))
    assert torch.equal(ours, ref)
    # spot values of the bidirectional formula: 16 per sign, exact below 8, log up to 128, clipped at 15
    assert ours[0, 0] == 0 and ours[0, 7] == 16 + 7 and ours[7, 0] == 7
    assert ours[0, 8] == 16 + 8 and ours[0, 399] == 31 and ours[399, 0] == 15


def test_t5_key_map_covers_every_official_key_once():
    cfg = T5_TINY
    hf = _hf_umt5(cfg)
    hf_keys = list(hf.state_dict())
    mapped = [t5_key_from_hf(k) for k in hf_keys]
    official = [k for k in mapped if k is not None]
    assert sorted(official) == sorted(T5Encoder(cfg).state_dict())
    assert len(official) == len(set(official))
    assert t5_key_from_hf("encoder.block.3.layer.1.DenseReluDense.wi_0.weight") == "blocks.3.ffn.gate.0.weight"
    assert t5_key_from_hf("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight") == \
        "blocks.0.pos_embedding.embedding.weight"
    with pytest.raises(KeyError, match="not a umT5 encoder key"):
        t5_key_from_hf("decoder.block.0.layer.0.SelfAttention.q.weight")


def test_text_encoder_trims_and_matches_full_length_run():
    model = random_t5(T5_TINY, torch.float32, seed=3)
    tok = ByteTokenizer(seq_len=64)
    prompts = ["a cat walks on the grass", "hi"]
    short = TextEncoder(model, tok).encode(prompts)
    full = TextEncoder(model, tok, full_length=True).encode(prompts)
    assert [u.shape for u in short] == [(len(prompts[0]) + 1, 256), (3, 256)]  # bytes + EOS
    for a, b in zip(short, full):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # the official path: model on all 64 slots with the mask, trimmed to mask.sum()
    ids, mask = tok(prompts)
    with torch.no_grad():
        ref = model(ids, mask)
    torch.testing.assert_close(short[1], ref[1, :3], rtol=1e-5, atol=1e-5)

    ctx = pad_context(short, text_len=64)
    assert ctx.shape == (2, 64, 256)
    assert torch.equal(ctx[1, :3], short[1]) and not ctx[1, 3:].any()


def test_text_encoder_rejects_a_tokenizer_larger_than_the_vocab():
    model = random_t5(T5Config(vocab_size=100, dim=64, dim_attn=64, dim_ffn=64, num_heads=2, num_layers=1),
                      torch.float32)
    with pytest.raises(ValueError, match="does not belong to this model"):
        TextEncoder(model, ByteTokenizer())


def test_t5_config_checks():
    with pytest.raises(ValueError, match="multiple of num_heads"):
        T5Config(dim_attn=100, num_heads=3)
    with pytest.raises(ValueError, match="unknown T5 architecture key"):
        T5Config.from_mapping({"dim": 8, "layers": 2})
    assert T5Config.preset("tiny") == T5_TINY
    assert T5Config().head_dim == 64 and T5Config().num_layers == 24


def test_t5_fp16_clamps_infinities(monkeypatch):
    import lightx2v_quant.models.wan.t5 as t5_module

    model = random_t5(T5_TINY, torch.float16, seed=0)
    tokens = ByteTokenizer(16)(["overflow"])
    with torch.no_grad():
        model.blocks[0].ffn.fc2.weight.mul_(1e5)  # force an fp16 overflow in the residual stream
        assert torch.isfinite(model(*tokens)).all()
        monkeypatch.setattr(t5_module, "_fp16_clamp", lambda x: x)
        assert not torch.isfinite(model(*tokens)).all()  # the clamp is what keeps it finite


def test_load_t5_reads_a_transformers_checkpoint(tmp_path):
    from lightx2v_quant.checkpoints.reader import CheckpointError
    from lightx2v_quant.models.wan import load_t5

    hf = _hf_umt5(T5_TINY)
    hf.save_pretrained(str(tmp_path / "text_encoder"))  # as diffusers' Wan folders ship it
    path = tmp_path / "text_encoder" / "model.safetensors"
    ours = load_t5(path, T5_TINY, dtype="fp32", layout="transformers")
    ids, mask = _ids_and_mask(T5_TINY, [40, 9], seq=40)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(ours(ids, mask), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(CheckpointError, match="missing"):
        load_t5(path, T5_TINY, dtype="fp32")  # official layout expected by default
    with pytest.raises(ValueError, match="unknown T5 checkpoint layout"):
        load_t5(path, T5_TINY, layout="hf")
