"""Byte layouts: any mix of dtypes, strides and aliases round-trips through one arena."""

import pytest
import torch
from torch import nn

from lightx2v_quant.offload.layout import ALIGN, aligned_empty, apply_binding, build_layout, module_refs


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w8 = nn.Parameter(torch.randint(-128, 127, (24, 16), dtype=torch.int8), requires_grad=False)
        self.register_buffer("fp8", torch.randn(8, 32).to(torch.float8_e4m3fn))
        self.register_buffer("scale", torch.rand(24, 1))
        self.register_buffer("packed", torch.randint(0, 255, (7, 3), dtype=torch.uint8))
        self.bias = nn.Parameter(torch.randn(24, dtype=torch.bfloat16))
        self.norm = nn.Parameter(torch.randn(5, dtype=torch.float32))
        self.register_buffer("empty", torch.empty(0, 4, dtype=torch.float16))
        # derived, non-persistent: a view of a persistent tensor, and a strided (transposed) view
        self.register_buffer("scale_row", self.scale.reshape(1, 24), persistent=False)
        self.register_buffer("w8_t", self.w8.data.t(), persistent=False)


def snapshot(m: nn.Module) -> dict:
    return {n: t.detach().clone() for n, t in list(m.named_parameters()) + list(m.named_buffers())}


def test_roundtrip_mixed_dtypes_aliases_and_strides():
    m = Mixed()
    before = snapshot(m)
    refs = module_refs(m, "")
    layout = build_layout("mixed", refs)
    # aliases share a region (w8 + w8_t, scale + scale_row): 6 regions for 8 non-empty tensors
    assert len(layout.regions) == 6
    assert layout.nbytes % ALIGN == 0
    arena = aligned_empty(layout.nbytes)
    layout.pack(arena)
    apply_binding(layout.views(arena))
    after = snapshot(m)
    for name, t in before.items():
        got = after[name]
        assert got.dtype == t.dtype and got.shape == t.shape and got.stride() == t.stride()
        assert torch.equal(after[name].view(torch.uint8) if t.dtype == torch.float8_e4m3fn else after[name],
                           t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t), name
    base, end = arena.data_ptr(), arena.data_ptr() + arena.numel()
    for name, t in list(m.named_parameters()) + list(m.named_buffers()):
        if t.numel():
            assert base <= t.data_ptr() < end, f"{name} does not live in the arena"
    assert m.scale_row.data_ptr() == m.scale.data_ptr()  # the alias is kept
    assert m.w8_t.data_ptr() == m.w8.data_ptr() and m.w8_t.stride() == (1, 16)
    assert isinstance(m.w8, nn.Parameter) and isinstance(m.bias, nn.Parameter)


def test_regions_start_aligned_and_views_keep_dtype_alignment():
    m = Mixed()
    layout = build_layout("mixed", module_refs(m, ""))
    for region in layout.regions:
        if len(region.members) == 1:
            assert region.offset % ALIGN == 0
        for ref, rel in region.members:
            assert (region.offset + rel) % ref.itemsize == 0


def test_persistence_and_owner():
    m = Mixed()
    refs = {r.qualname: r for r in module_refs(m, "")}
    assert not refs["scale_row"].persistent and refs["scale"].persistent
    layout = build_layout("mixed", list(refs.values()))
    owners = {region.owner().qualname for region in layout.regions if region.owner() is not None}
    assert {"w8", "fp8", "scale", "packed", "bias", "norm"} == owners


def test_unregistered_tensor_attribute_is_an_error():
    m = nn.Linear(4, 4)
    m.cache = torch.zeros(3)
    with pytest.raises(TypeError, match="cache.*register_buffer"):
        module_refs(m, "lin")


def test_meta_views_release_memory_and_keep_geometry():
    m = Mixed()
    layout = build_layout("mixed", module_refs(m, ""))
    apply_binding(layout.meta_views())
    assert m.w8.is_meta and m.w8_t.stride() == (1, 16) and m.fp8.dtype == torch.float8_e4m3fn


def test_views_reject_misaligned_arena():
    m = Mixed()
    layout = build_layout("mixed", module_refs(m, ""))
    arena = aligned_empty(layout.nbytes + ALIGN)
    with pytest.raises(ValueError, match="aligned"):
        layout.views(arena[8:8 + layout.nbytes])
