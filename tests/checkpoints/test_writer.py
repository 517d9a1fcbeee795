"""The streaming writers: safetensors bytes equal safetensors' own, .pth order/content, atomic outputs."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save

from lightx2v_quant.checkpoints.reader import BlockFilesSource, CheckpointError, open_checkpoint
from lightx2v_quant.checkpoints.writer import (
    SafetensorsWriter,
    TensorPlan,
    atomic_file,
    safetensors_to_pth,
    write_safetensors,
)
from tests.checkpoints.spec import raw


def _mixed() -> dict[str, torch.Tensor]:
    return {
        "blocks.0.ffn.0.weight": torch.randn(8, 16).to(torch.float8_e4m3fn),
        "blocks.0.ffn.0.weight_scale": torch.rand(8, 1),
        "a.bias": torch.randn(8, dtype=torch.bfloat16),
        "q": torch.randint(-128, 127, (4, 4), dtype=torch.int8),
        "p": torch.randint(0, 255, (4, 2), dtype=torch.uint8),
        "log_scale": torch.tensor(4.6),
        "ids": torch.arange(3),
        "d": torch.randn(2, dtype=torch.float64),
        "h": torch.randn(3, dtype=torch.float16),
        "empty": torch.empty(0, 5),
    }


def test_streamed_file_is_byte_identical_to_safetensors_save(tmp_path):
    d = _mixed()
    path = tmp_path / "x.safetensors"
    plan = [TensorPlan(k, tuple(t.shape), t.dtype) for k, t in d.items()]
    w = SafetensorsWriter(path, plan)
    for k in reversed(list(d)):  # any order
        w.write(k, d[k])
    w.close()
    assert path.read_bytes() == save(d)  # no metadata, same order and padding
    back = load_file(path)
    assert all(torch.equal(raw(back[k]), raw(d[k])) for k in d)


def test_writer_checks_the_plan(tmp_path):
    w = SafetensorsWriter(
        tmp_path / "x.safetensors", [TensorPlan("a", (2,), torch.float32), TensorPlan("b", (1,), torch.int8)]
    )
    with pytest.raises(ValueError, match="planned"):
        w.write("a", torch.zeros(3))
    w.write("a", torch.zeros(2))
    with pytest.raises(ValueError, match="written twice"):
        w.write("a", torch.zeros(2))
    with pytest.raises(ValueError, match="never written"):
        w.close()


def test_pth_keeps_the_given_order_and_bytes(tmp_path):
    d = _mixed()
    write_safetensors(tmp_path / "x.safetensors", d)
    order = list(reversed(list(d)))
    safetensors_to_pth(tmp_path / "x.safetensors", tmp_path / "x.pth", order)
    back = torch.load(tmp_path / "x.pth", weights_only=True)
    assert list(back) == order
    assert all(back[k].dtype == d[k].dtype and torch.equal(raw(back[k]), raw(d[k])) for k in d)


def test_atomic_file_leaves_nothing_on_failure_and_refuses_to_overwrite(tmp_path):
    final = tmp_path / "out.safetensors"
    with pytest.raises(RuntimeError):
        with atomic_file(final, overwrite=False) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    final.write_bytes(b"old")
    with pytest.raises(FileExistsError, match="--overwrite"):
        with atomic_file(final, overwrite=False):
            pass
    with atomic_file(final, overwrite=True) as tmp:
        tmp.write_bytes(b"new")
    assert final.read_bytes() == b"new" and len(list(tmp_path.iterdir())) == 1


def test_block_files_source(tmp_path):
    write_safetensors(tmp_path / "non_block.safetensors", {"head.head.weight": torch.ones(2, 2)})
    for i in range(3):
        write_safetensors(
            tmp_path / f"block_{i}.safetensors",
            {
                f"blocks.{i}.ffn.0.weight": torch.full((2, 2), float(i)),
                f"blocks.{i}.modulation": torch.ones(1, 6, 2),
            },
        )
    src = open_checkpoint(tmp_path)
    assert isinstance(src, BlockFilesSource) and src.num_blocks == 3
    assert sorted(src.block_keys(2)) == ["blocks.2.ffn.0.weight", "blocks.2.modulation"]
    assert src.non_block_keys() == ["head.head.weight"]
    assert float(src.read_block(1)["blocks.1.ffn.0.weight"][0, 0]) == 1.0
    (tmp_path / "block_1.safetensors").unlink()
    with pytest.raises(CheckpointError, match="lacks block_1.safetensors"):
        open_checkpoint(tmp_path)
