"""Wan2.1 VAE: structure and key names, parity with diffusers' AutoencoderKLWan, chunking, memory, loading."""

import pytest
import torch
from diffusers import AutoencoderKLWan

from lightx2v_quant.checkpoints.reader import CheckpointError
from lightx2v_quant.models.wan import VaeConfig, WanVAE, build_vae, load_vae, random_vae
from lightx2v_quant.models.wan.vae_blocks import CausalCache, Resample
from lightx2v_quant.models.wan.vae_load import (
    diffusers_key_map,
    diffusers_to_official,
    official_to_diffusers,
    official_to_diffusers_key,
)

TINY = VaeConfig.tiny()


@pytest.fixture(scope="module")
def pair() -> tuple[WanVAE, AutoencoderKLWan]:
    """Our tiny VAE with random weights and diffusers' model holding the same weights."""
    ours = random_vae(TINY, seed=1)
    ref = AutoencoderKLWan(base_dim=TINY.dim, z_dim=TINY.z_dim).eval()
    ref.load_state_dict(official_to_diffusers(ours.state_dict(), TINY), strict=True)
    return ours, ref


def _stats():
    mean = torch.tensor(TINY.latents_mean).view(1, -1, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(TINY.latents_std).view(1, -1, 1, 1, 1)
    return mean, inv_std


def _video(b, t, h, w, seed=0):
    return torch.rand(b, 3, t, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---- structure and key names ----------------------------------------------------------------------

def test_official_structure_matches_checkpoint():
    sd = build_vae().state_dict()
    assert len(sd) == 194
    assert sum(t.numel() for t in sd.values()) == 126_892_531
    expected = {
        "encoder.conv1.weight": (96, 3, 3, 3, 3),
        "encoder.downsamples.0.residual.0.gamma": (96, 1, 1, 1),
        "encoder.downsamples.3.shortcut.weight": (192, 96, 1, 1, 1),
        "encoder.downsamples.5.time_conv.weight": (192, 192, 3, 1, 1),
        "encoder.downsamples.8.resample.1.weight": (384, 384, 3, 3),
        "encoder.middle.1.norm.gamma": (384, 1, 1),
        "encoder.middle.1.to_qkv.weight": (1152, 384, 1, 1),
        "encoder.head.2.weight": (32, 384, 3, 3, 3),
        "conv1.weight": (32, 32, 1, 1, 1),
        "conv2.weight": (16, 16, 1, 1, 1),
        "decoder.conv1.weight": (384, 16, 3, 3, 3),
        "decoder.upsamples.3.time_conv.weight": (768, 384, 3, 1, 1),
        "decoder.upsamples.3.resample.1.weight": (192, 384, 3, 3),
        "decoder.upsamples.4.shortcut.weight": (384, 192, 1, 1, 1),
        "decoder.upsamples.11.resample.1.weight": (96, 192, 3, 3),
        "decoder.upsamples.14.residual.6.weight": (96, 96, 3, 3, 3),
        "decoder.head.0.gamma": (96, 1, 1, 1),
        "decoder.head.2.weight": (3, 96, 3, 3, 3),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert max(int(k.split(".")[2]) for k in sd if k.startswith("decoder.upsamples.")) == 14
    assert max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.downsamples.")) == 10


def test_tiny_has_the_official_key_names():
    assert set(build_vae(TINY).state_dict()) == set(build_vae().state_dict())
    assert VaeConfig.preset("wan2.1") == VaeConfig() and VaeConfig.preset("tiny") == TINY


@pytest.mark.parametrize("cfg", [TINY, VaeConfig()], ids=["tiny", "official"])
def test_key_map_to_diffusers_is_a_bijection_with_equal_shapes(cfg):
    with torch.device("meta"):
        ref = AutoencoderKLWan(base_dim=cfg.dim, z_dim=cfg.z_dim)
    ref_sd = ref.state_dict()
    ours = build_vae(cfg).state_dict()
    mapping = diffusers_key_map(cfg)
    assert sorted(mapping.values()) == sorted(ref_sd)
    for k, v in ours.items():
        assert ref_sd[mapping[k]].shape == v.shape, k
    assert diffusers_to_official(official_to_diffusers(ours, cfg), cfg).keys() == ours.keys()


KEY_EXAMPLES = [  # official -> diffusers
    ("conv1.weight", "quant_conv.weight"),
    ("encoder.conv1.bias", "encoder.conv_in.bias"),
    ("encoder.downsamples.3.residual.3.gamma", "encoder.down_blocks.3.norm2.gamma"),
    ("encoder.downsamples.3.shortcut.weight", "encoder.down_blocks.3.conv_shortcut.weight"),
    ("decoder.middle.1.to_qkv.weight", "decoder.mid_block.attentions.0.to_qkv.weight"),
    ("decoder.middle.2.residual.6.bias", "decoder.mid_block.resnets.1.conv2.bias"),
    ("decoder.upsamples.7.time_conv.weight", "decoder.up_blocks.1.upsamplers.0.time_conv.weight"),
    ("decoder.upsamples.12.residual.2.weight", "decoder.up_blocks.3.resnets.0.conv1.weight"),
    ("decoder.head.2.weight", "decoder.conv_out.weight"),
]


@pytest.mark.parametrize("official,diffusers", KEY_EXAMPLES)
def test_key_map_examples(official, diffusers):
    assert official_to_diffusers_key(official) == diffusers


def test_key_map_rejects_unknown_keys():
    with pytest.raises(KeyError, match="upsamples.15"):
        official_to_diffusers_key("decoder.upsamples.15.residual.2.weight")
    with pytest.raises(KeyError, match="not keys of a diffusers"):
        diffusers_to_official({"encoder.conv_in.weigth": torch.zeros(1)}, TINY)


def test_config_errors():
    with pytest.raises(ValueError, match="temporal_downsample"):
        VaeConfig(temporal_downsample=(True, True))
    with pytest.raises(ValueError, match="z_dim=8"):
        VaeConfig(z_dim=8)
    with pytest.raises(ValueError, match="unknown VAE preset 'wan2.2'"):
        VaeConfig.preset("wan2.2")


# ---- parity with diffusers ------------------------------------------------------------------------

@pytest.mark.parametrize("frames", [1, 5, 9])
def test_encode_matches_diffusers(pair, frames):
    ours, ref = pair
    x = _video(2, frames, 32, 48)
    mean, inv_std = _stats()
    with torch.no_grad():
        # the latent normalisation lives outside diffusers' model: apply it here
        want = (ref.encode(x).latent_dist.mean - mean) * inv_std
    got = ours.encode(x)
    assert got.shape == (2, 16, 1 + (frames - 1) // 4, 4, 6) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("latent_frames", [1, 2, 3])
def test_decode_matches_diffusers(pair, latent_frames):
    ours, ref = pair
    z = torch.randn(2, 16, latent_frames, 4, 6, generator=torch.Generator().manual_seed(latent_frames))
    mean, inv_std = _stats()
    with torch.no_grad():
        want = ref.decode(z / inv_std + mean).sample
    got = ours.decode(z)
    assert got.shape == (2, 3, 1 + 4 * (latent_frames - 1), 32, 48)
    assert 0.05 < got.std() and got.abs().amax() <= 1.0  # not a saturated / constant output
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5)


def test_streaming_iterators_equal_the_whole_calls(pair):
    ours, _ = pair
    x = _video(1, 9, 32, 32, seed=3)
    z = ours.encode(x)
    assert torch.equal(torch.cat(list(ours.iter_encode(x)), dim=2), z)
    chunks = list(ours.iter_decode(z))
    assert [c.shape[2] for c in chunks] == [1, 4, 4]
    assert torch.equal(torch.cat(chunks, dim=2), ours.decode(z))


def test_temporal_upsample_second_chunk_sees_zeros_not_the_first_chunk():
    """Official detail: latent frame 0 skips the time conv; for frame 1 that conv is zero padded."""
    torch.manual_seed(0)
    up = Resample(8, "up3d").eval()
    second = torch.randn(1, 8, 1, 4, 4)
    outs = []
    for first in (torch.randn(1, 8, 1, 4, 4), torch.zeros(1, 8, 1, 4, 4)):
        cache = CausalCache()
        with torch.no_grad():
            assert up(first, cache).shape[2] == 1  # frame 0 stays one frame
            outs.append(up(second, cache))
    assert outs[0].shape[2] == 2
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


# ---- frame counts and input checks ----------------------------------------------------------------

def test_bad_inputs_give_one_clear_error(pair):
    ours, _ = pair
    with pytest.raises(ValueError, match=r"1 \+ 4k frames .* got 6; trim or pad the video to 5 or 9"):
        ours.encode(_video(1, 6, 32, 32))
    with pytest.raises(ValueError, match="divisible by 8, got 36x32"):
        ours.encode(_video(1, 5, 36, 32))
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        ours.encode(torch.zeros(1, 4, 5, 32, 32))
    with pytest.raises(ValueError, match=r"latents \[B, 16, T, h, w\]"):
        ours.decode(torch.zeros(1, 8, 2, 4, 4))
    with pytest.raises(ValueError, match="got 4"):
        ours.iter_encode(_video(1, 4, 32, 32))  # raised at the call, before any iteration
    with pytest.raises(ValueError, match=r"got shape \[1, 16, 2, 4\]"):
        ours.iter_decode(torch.zeros(1, 16, 2, 4))


# ---- memory does not grow with the number of frames -----------------------------------------------

def _cache_sizes_per_chunk(gen, cache):
    sizes = []
    for _ in gen:
        sizes.append((cache.nbytes(), len(cache), sorted(tuple(t.shape) for t in cache.tensors())))
    return sizes


def test_decode_cache_is_constant_in_length(pair):
    ours, _ = pair
    short, long = torch.randn(1, 16, 3, 4, 4), torch.randn(1, 16, 7, 4, 4)
    s_cache, l_cache = CausalCache(), CausalCache()
    s = _cache_sizes_per_chunk(ours.iter_decode(short, s_cache), s_cache)
    l = _cache_sizes_per_chunk(ours.iter_decode(long, l_cache), l_cache)
    # from the third chunk on, every cached conv holds exactly 2 frames: the state is fixed in size
    assert all(entry == l[2] for entry in l[2:]) and s[2] == l[2]
    assert all(shape[2] == 2 for shape in l[2][2])


def test_encode_cache_is_constant_in_length(pair):
    ours, _ = pair
    cache = CausalCache()
    sizes = _cache_sizes_per_chunk(ours.iter_encode(_video(1, 17, 32, 32), cache), cache)
    assert len(sizes) == 5 and all(entry == sizes[1] for entry in sizes[1:])


# ---- loading ----------------------------------------------------------------------------------------

def test_official_pth_loads_and_computes_the_same(pair, tmp_path):
    ours, _ = pair
    path = tmp_path / "Wan2.1_VAE.pth"
    torch.save({k: v.clone() for k, v in ours.state_dict().items()}, path)
    loaded = load_vae(path, TINY)
    assert all(not p.is_meta and not p.requires_grad for p in loaded.parameters())
    z = torch.randn(1, 16, 2, 4, 4)
    assert torch.equal(loaded.decode(z), ours.decode(z))
    half = load_vae(path, TINY, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.decoder.conv1.weight.dtype == torch.bfloat16


def test_diffusers_layout_loads(pair, tmp_path):
    from safetensors.torch import save_file

    ours, ref = pair
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    loaded = load_vae(path, TINY)  # layout detected
    x = _video(1, 5, 32, 32)
    assert torch.equal(loaded.encode(x), ours.encode(x))
    with pytest.raises(CheckpointError, match="missing 194 tensor"):
        load_vae(path, TINY, layout="official")


def _write(tmp_path, sd):
    path = tmp_path / "vae.pth"
    torch.save(sd, path)
    return path


def test_missing_extra_and_misshaped_keys_are_named(tmp_path):
    sd = random_vae(TINY).state_dict()
    missing = dict(sd)
    del missing["decoder.upsamples.3.time_conv.weight"]
    with pytest.raises(CheckpointError, match=r"missing 1 tensor\(s\): decoder.upsamples.3.time_conv.weight"):
        load_vae(_write(tmp_path, missing), TINY)
    extra = dict(sd, **{"model_ema.decay": torch.tensor(0.99)})
    with pytest.raises(CheckpointError, match=r"unexpected 1 tensor\(s\): model_ema.decay"):
        load_vae(_write(tmp_path, extra), TINY)
    shape_msg = r"encoder.conv1.weight: file has \[96, 3, 3, 3, 3\], model expects \[16"
    with pytest.raises(CheckpointError, match=shape_msg):
        wrong = dict(sd, **{"encoder.conv1.weight": torch.zeros(96, 3, 3, 3, 3)})
        load_vae(_write(tmp_path, wrong), TINY)
    with pytest.raises(CheckpointError, match="is not a Wan VAE checkpoint"):
        load_vae(_write(tmp_path, {"blocks.0.weight": torch.zeros(2)}), TINY)
    with pytest.raises(ValueError, match="layout must be one of"):
        load_vae(_write(tmp_path, sd), TINY, layout="comfy")


def test_random_vae_is_seeded():
    a, b, c = random_vae(TINY, seed=3), random_vae(TINY, seed=3), random_vae(TINY, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["decoder.head.2.weight"], sc["decoder.head.2.weight"])
    assert not torch.equal(sa["encoder.head.0.gamma"], torch.ones_like(sa["encoder.head.0.gamma"]))


def test_bf16_is_close_to_fp32():
    full, half = random_vae(TINY, seed=2), random_vae(TINY, seed=2, dtype=torch.bfloat16)
    z = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    a, b = full.decode(z), half.decode(z)
    assert b.dtype == torch.float32
    assert ((a - b).norm() / a.norm()) < 0.1


# ---- GPU ------------------------------------------------------------------------------------------

@pytest.mark.gpu
def test_cuda_decode_matches_cpu(monkeypatch):
    # cuDNN runs fp32 convs in TF32 by default (as the official pipeline does); turn it off for a tight check
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    cpu = random_vae(TINY, seed=5)
    z = torch.randn(1, 16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    want = cpu.decode(z)
    gpu32 = random_vae(TINY, seed=5, device="cuda")
    torch.testing.assert_close(gpu32.decode(z.cuda()).cpu(), want, rtol=1e-4, atol=1e-4)
    gpu16 = random_vae(TINY, seed=5, device="cuda", dtype=torch.bfloat16)
    got = gpu16.decode(z)  # latents on the CPU: chunks go to the GPU, the video comes back to the CPU
    assert got.device.type == "cpu" and got.dtype == torch.float32
    assert ((got - want).norm() / want.norm()) < 0.1
    x = _video(1, 9, 64, 64)
    enc = gpu16.encode(x.cuda()).cpu()
    ref = cpu.encode(x)
    assert ((enc - ref).norm() / ref.norm()) < 0.05
