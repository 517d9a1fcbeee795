"""Disk offload: per-block files read by worker threads into a ring of host buffers, on a fake transport."""

import copy
import json

import pytest
import torch
from safetensors.torch import save_file

from lightx2v_quant.checkpoints.reader import CheckpointError
from lightx2v_quant.config import OffloadConfig
from lightx2v_quant.offload.disk import FileReader, dit_files, file_index, save_by_block
from lightx2v_quant.offload.manager import wrap_for_offload
from tests.offload.fakes import FakeTransport, check_schedule
from tests.offload.toy import metaize, toy_inputs, toy_model

SEEDS = (1, 2, 3)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = toy_model(layers=4)
    folder = tmp_path_factory.mktemp("blocks")
    save_by_block(model, folder)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        outs = [ref(*toy_inputs(s)) for s in SEEDS]
    return model, folder, outs


def run_disk(model, checkpoint, granularity="block", lazy=True, buffers=3, workers=2, **kw):
    t = FakeTransport(lazy=lazy)
    cfg = OffloadConfig(mode="disk", granularity=granularity, host_buffers=buffers, num_disk_workers=workers)
    handle = wrap_for_offload(model, cfg, "cpu", transport=t, checkpoint=checkpoint, **kw)
    with torch.no_grad(), handle:
        outs = [model(*toy_inputs(s)) for s in SEEDS]
    return outs, t, handle


@pytest.mark.parametrize("granularity", ["block", "phase"])
@pytest.mark.parametrize("built_on_meta", [False, True])
def test_disk_outputs_identical_and_protocol_holds(saved, granularity, built_on_meta):
    model, folder, expected = saved
    m = metaize(model) if built_on_meta else copy.deepcopy(model)
    outs, t, handle = run_disk(m, folder, granularity)
    assert all(torch.equal(o, e) for o, e in zip(outs, expected))
    checked = check_schedule(t)
    units = len(handle.units)
    assert checked["use_after_fill"] == units * len(SEEDS)
    assert checked["copy_after_write"] >= units * len(SEEDS)
    assert checked["write_after_copy"] > 0
    stats = handle.stats()
    assert stats["restarts"] == 0 and stats["disk_read_bytes"] > 0
    # host RAM: the ring (3 units) plus the kernel-derived int4 layouts of block 0 (not in the checkpoint)
    ring = 3 * max(u.nbytes for u in handle.units)
    derived = sum(u.disk.host_bytes for u in handle.units) + handle.non_block.disk.host_bytes
    backing = handle.store.backing.numel()
    assert ring <= backing < ring + 4096  # whole pages
    assert derived > 0 and stats["host_weight_bytes"] == backing + derived
    assert m.blocks[1].self_attn.q.weight.is_meta  # nothing of the model is kept between loops
    handle.close()


def test_ring_buffers_rotate_and_reads_stay_ahead(saved):
    model, folder, _ = saved
    _, t, handle = run_disk(copy.deepcopy(model), folder, "phase", buffers=4, workers=3)
    writes = t.find("host_write")
    assert all(o.info["buffer"] == o.info["g"] % 4 for o in writes)
    requests = [o.info["g"] for o in t.find("request")]
    assert requests == list(range(len(requests)))
    # never more units requested but not yet copied than host buffers
    in_flight, worst = set(), 0
    for op in t.ops:
        if op.kind == "request":
            in_flight.add(op.info["g"])
        elif op.kind == "host_released":
            in_flight.discard(op.info["g"])
        worst = max(worst, len(in_flight))
    assert worst <= 4
    handle.close()


def test_single_file_checkpoint_and_dtype_conversion(saved, tmp_path):
    """One .safetensors file; norms stored in fp32 while the model holds bf16 are converted on the way."""
    model, _, expected = saved
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    sd = {k: (v.float() if v.dtype == torch.bfloat16 else v) for k, v in sd.items()}
    save_file(sd, str(tmp_path / "dit.safetensors"))
    outs, t, handle = run_disk(metaize(model), tmp_path / "dit.safetensors", lazy=False)
    assert all(torch.equal(o, e) for o, e in zip(outs, expected))
    check_schedule(t)


def test_quantized_tensor_in_another_format_is_an_error(saved, tmp_path):
    model, _, _ = saved
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    key = "blocks.0.self_attn.q.weight"  # int8 in the model
    sd[key] = sd[key].float()
    save_file(sd, str(tmp_path / "dit.safetensors"))
    with pytest.raises((CheckpointError, ValueError), match="self_attn.q.weight.*convert the checkpoint"):
        run_disk(metaize(model), tmp_path / "dit.safetensors")


def test_missing_tensor_is_an_error(saved, tmp_path):
    model, _, _ = saved
    sd = {k: v.contiguous() for k, v in model.state_dict().items() if k != "blocks.2.norm3.weight"}
    save_file(sd, str(tmp_path / "dit.safetensors"))
    with pytest.raises((CheckpointError, ValueError), match="blocks.2.norm3.weight"):
        run_disk(copy.deepcopy(model), tmp_path / "dit.safetensors")


def test_dit_files_discovery(tmp_path, saved):
    _, folder, _ = saved
    files = dit_files(folder)
    assert files[0].name == "non_block.safetensors" and [f.name for f in files[1:]] == [
        f"block_{i}.safetensors" for i in range(4)]
    with pytest.raises(CheckpointError, match="neither"):
        dit_files(tmp_path)
    with pytest.raises(CheckpointError, match="safetensors"):
        dit_files(tmp_path / "model.pth")
    index = {"weight_map": {k: f.name for f in files for k in file_index([f])}}
    shards = tmp_path / "shards"
    shards.mkdir()
    for f in files:
        (shards / f.name.replace("block_", "part-")).write_bytes(f.read_bytes())
    index = {"weight_map": {k: v.replace("block_", "part-") for k, v in index["weight_map"].items()}}
    (shards / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    assert len(dit_files(shards / "diffusion_pytorch_model.safetensors.index.json")) == len(files)
    assert dit_files(shards) == dit_files(shards / "diffusion_pytorch_model.safetensors.index.json")


def test_file_reader_reads_exact_bytes(tmp_path):
    t = torch.randn(33, 7)
    save_file({"a": torch.arange(5, dtype=torch.int8), "t": t}, str(tmp_path / "x.safetensors"))
    ft = file_index([tmp_path / "x.safetensors"])["t"]
    dst = torch.empty(ft.nbytes, dtype=torch.uint8)
    reader = FileReader()
    reader.read_into(ft, 0, dst)
    assert torch.equal(dst.view(torch.float32).view(33, 7), t)
    part = torch.empty(28, dtype=torch.uint8)
    reader.read_into(ft, 28, part)
    assert torch.equal(part.view(torch.float32), t.flatten()[7:14])
    reader.close()
