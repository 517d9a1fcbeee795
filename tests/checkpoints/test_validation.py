"""Each bad checkpoint gives one clear error: missing scale, wrong shape, a dtype that does not match the
scheme, truncated / corrupt files; and the header-only inspection."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from lightx2v_quant.checkpoints.inspect import check_format, inspect_checkpoint, layer_format
from lightx2v_quant.checkpoints.loader import load_into
from lightx2v_quant.checkpoints.numerics import checkpoint_tensors
from lightx2v_quant.checkpoints.reader import CheckpointError, open_checkpoint
from lightx2v_quant.checkpoints.synthetic import dit_shapes, random_state_dict
from lightx2v_quant.quant.apply import quantize_model
from tests.checkpoints.spec import TinyDit, spec_convert

TINY = dict(dim=128, ffn_dim=256, num_layers=1, text_dim=64, freq_dim=32)


@pytest.fixture(scope="module")
def original():
    return random_state_dict(dit_shapes(**TINY), seed=2)


def _model(scheme: str, **kw) -> TinyDit:
    with torch.device("meta"):
        m = TinyDit(**{**TINY, **kw})
    quantize_model(m, scheme, TinyDit.QUANT_PATTERNS, empty=True)
    return m


def _load(scheme: str, path, **kw):
    return load_into(_model(scheme, **kw), open_checkpoint(path), what="dit")


def test_scale_key_missing(tmp_path, original):
    sd = spec_convert(original, "dit", "int8", None)
    del sd["blocks.0.ffn.2.weight_scale"]
    save_file(sd, tmp_path / "x.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"scale key missing: blocks\.0\.ffn\.2\.weight is int8 .*"
        r"blocks\.0\.ffn\.2\.weight_scale is not in .*x\.safetensors.*re-convert",
    ):
        _load("int8-torch", tmp_path / "x.safetensors")
    info = inspect_checkpoint(tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match=r"scale key missing: blocks\.0\.ffn\.2\.weight is int8"):
        check_format(info, "w8a8-int8-channel", "dit")


def test_dtype_does_not_match_the_scheme(tmp_path, original):
    save_file(spec_convert(original, "dit", "int8", None), tmp_path / "int8.safetensors")
    with pytest.raises(CheckpointError) as e:
        _load("fp8-sgl", tmp_path / "int8.safetensors")
    msg = str(e.value)
    assert "holds w8a8-int8-channel weights" in msg and "scheme fp8-sgl needs w8a8-fp8-channel" in msg
    assert "dtype does not match the scheme" in msg
    info = inspect_checkpoint(tmp_path / "int8.safetensors")
    with pytest.raises(CheckpointError, match="Choose a int8-\\* scheme"):
        check_format(info, "w8a8-fp8-channel", "dit", "fp8-sgl")
    with pytest.raises(CheckpointError, match="no quantization scheme is set"):
        check_format(info, None, "dit")


def test_block_scales_under_a_per_channel_scheme(tmp_path, original):
    sd = dict(original)
    for key in [
        k for k in original if k.startswith("blocks.") and k.endswith(".weight") and original[k].dim() == 2
    ]:
        t = checkpoint_tensors("w8a8-fp8-block128", original[key])
        sd[key], sd[key + "_scale"] = t["weight"], t["weight_scale"]
    save_file(sd, tmp_path / "b128.safetensors")
    assert inspect_checkpoint(tmp_path / "b128.safetensors").format == "w8a8-fp8-block128"
    with pytest.raises(
        CheckpointError, match="holds w8a8-fp8-block128 weights .* scheme fp8-torch needs w8a8-fp8-channel"
    ):
        _load("fp8-torch", tmp_path / "b128.safetensors")
    assert len(_load("fp8-b128-torch", tmp_path / "b128.safetensors").prequantized) == 10


def test_shape_mismatch(tmp_path, original):
    save_file(spec_convert(original, "dit", "fp8", None), tmp_path / "x.safetensors")
    with pytest.raises(
        CheckpointError, match=r"wrong shape:\n  .*ffn\.0\.bias: file has \[256\], model expects \[384\]"
    ):
        _load("fp8-torch", tmp_path / "x.safetensors", ffn_dim=384)
    save_file(original, tmp_path / "o.safetensors")
    with pytest.raises(
        CheckpointError, match=r"blocks\.0\.ffn\.0\.weight: file has \[256, 128\], model expects \[384, 128\]"
    ):
        _load("fp8-torch", tmp_path / "o.safetensors", ffn_dim=384)  # online path
    with pytest.raises(CheckpointError, match=r"missing 27 tensor.*\n.*right model size"):
        _load("fp8-torch", tmp_path / "o.safetensors", num_layers=2)  # missing/unexpected keys


def test_truncated_and_corrupt_files(tmp_path, original):
    save_file(spec_convert(original, "dit", "fp8", None), tmp_path / "x.safetensors")
    data = (tmp_path / "x.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        CheckpointError,
        match=r"cut\.safetensors is truncated: the header describes \d+ bytes but the file has \d+",
    ):
        open_checkpoint(tmp_path / "cut.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(data[:8] + b"{not json" + data[17:])
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        open_checkpoint(tmp_path / "bad.safetensors")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty or truncated"):
        open_checkpoint(tmp_path / "empty.safetensors")
    torch.save(original, tmp_path / "x.pth")
    pth = (tmp_path / "x.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(pth[: len(pth) // 2])
    with pytest.raises(
        CheckpointError, match=r"cut\.pth is not a readable torch checkpoint .*truncated or corrupt"
    ):
        open_checkpoint(tmp_path / "cut.pth")


def test_inspect_reports_format_layers_and_dtypes(tmp_path, original):
    save_file(spec_convert(original, "dit", "fp8", torch.bfloat16), tmp_path / "x.safetensors")
    info = inspect_checkpoint(tmp_path / "x.safetensors")
    assert info.format == "w8a8-fp8-channel" and len(info.layers) == 10 and not info.problems
    assert info.dtypes["float8_e4m3fn"] == 10 and info.dtypes["float32"] == 10 and info.dtypes["bfloat16"] > 0
    assert "10 layers in w8a8-fp8-channel" in info.summary()
    save_file(original, tmp_path / "o.safetensors")
    plain = inspect_checkpoint(tmp_path / "o.safetensors")
    assert not plain.quantized and plain.format is None and "not quantized" in plain.summary()


@pytest.mark.parametrize(
    "fmt", ["w8a8-fp8-channel", "w8a8-int8-channel", "w4a16-int4-g128", "w8a8-fp8-block128"]
)
def test_layer_format_recognises_every_layout(fmt):
    t = checkpoint_tensors(fmt, torch.randn(256, 384))
    assert (
        layer_format(
            (tuple(t["weight"].shape), t["weight"].dtype), (tuple(t["weight_scale"].shape), torch.float32)
        )
        == fmt
    )
