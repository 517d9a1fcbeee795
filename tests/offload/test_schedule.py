"""The prefetch schedule on a fake transport: outputs identical to no offload, and the stream/event protocol
(use after fill, fill after release) holds on every step; the checker itself catches a missing wait."""

import copy

import pytest
import torch

from lightx2v_quant.config import OffloadConfig
from lightx2v_quant.offload.manager import wrap_for_offload
from lightx2v_quant.offload.units import WAN_PHASES, check_phases, unit_defs
from tests.offload.fakes import FakeTransport, check_schedule
from tests.offload.toy import Block, toy_inputs, toy_model

SEEDS = (1, 2, 3)


@pytest.fixture(scope="module")
def reference():
    model = toy_model(layers=4)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        outs = [ref(*toy_inputs(s)) for s in SEEDS]
    return model, outs


def run(model, mode, lazy=False, slots=2, seeds=SEEDS):
    t = FakeTransport(lazy=lazy)
    handle = wrap_for_offload(model, OffloadConfig(mode=mode, slots=slots), "cpu", transport=t)
    with torch.no_grad(), handle:
        outs = [model(*toy_inputs(s)) for s in seeds]
    return outs, t, handle


@pytest.mark.parametrize("mode", ["model", "block", "phase"])
@pytest.mark.parametrize("lazy", [False, True])
def test_outputs_identical_and_protocol_holds(reference, mode, lazy):
    model, expected = reference
    outs, t, handle = run(copy.deepcopy(model), mode, lazy)
    for out, exp in zip(outs, expected):
        assert torch.equal(out, exp)
    checked = check_schedule(t)
    if mode != "model":
        units = 4 if mode == "block" else 12
        assert checked["use_after_fill"] == units * len(SEEDS)
        assert checked["fill_after_release"] >= units * len(SEEDS) - 2
    stats = handle.stats()
    assert stats["mode"] == mode and stats["restarts"] == 0
    assert stats["forwards"] == (len(SEEDS) if mode != "model" else 0)


def test_prefetch_order_and_slot_reuse(reference):
    model, _ = reference
    _, t, handle = run(copy.deepcopy(model), "phase", slots=3, seeds=(1, 2))
    fills = [(o.info["g"], o.info["unit"], o.info["slot"]) for o in t.find("fill")]
    uses = [(o.info["g"], o.info["unit"], o.info["slot"]) for o in t.find("use")]
    # units run in order, phase after phase, forward after forward; unit g sits in slot g % 3
    assert [u for _, u, _ in uses] == list(range(12)) * 2
    assert all(slot == g % 3 for g, _, slot in fills + uses)
    # every unit is filled once, before it is used, and at most slots-1 units ahead of the one computing
    assert [g for g, _, _ in fills] == sorted(g for g, _, _ in fills)
    order = [(o.kind, o.info["g"]) for o in t.ops if o.kind in ("fill", "use")]
    for g, _, _ in uses:
        assert order.index(("fill", g)) < order.index(("use", g))
        if g + 3 <= uses[-1][0]:
            assert order.index(("fill", g + 3)) > order.index(("use", g))
    assert handle.stats()["device_slots"] == 3


def test_units_and_triggers():
    model = toy_model(layers=2, mixed=False)
    phases = unit_defs(model, "phase")
    assert [d.name for d in phases] == [f"blocks.{i}.phase{p}" for i in range(2) for p in range(3)]
    assert phases[0].triggers == [model.blocks[0]]
    assert phases[1].triggers == [model.blocks[0].norm3, model.blocks[0].cross_attn]
    names = {r.qualname for r in phases[0].refs()}
    assert "blocks.0.modulation" in names and "blocks.0.self_attn.q.weight" in names
    assert not any("cross_attn" in n or "ffn" in n for n in names)
    blocks = unit_defs(model, "block")
    assert sum(len(d.refs()) for d in phases[:3]) == len(blocks[0].refs())


def test_phase_checks_name_the_problem():
    block = Block(64, 128, 2)
    with pytest.raises(ValueError, match="'modulation' is the block's own tensor: it must be in the first"):
        check_phases(block, (("self_attn",), ("modulation", "norm3", "cross_attn"), ("ffn",)), "b")
    with pytest.raises(ValueError, match="submodule 'ffn' holds tensors but is in no phase"):
        check_phases(block, (("modulation", "self_attn"), ("norm3", "cross_attn")), "b")
    with pytest.raises(ValueError, match="'nope' is neither"):
        check_phases(block, (("modulation", "self_attn", "nope"), ("norm3", "cross_attn"), ("ffn",)), "b")
    check_phases(block, WAN_PHASES, "b")


def test_out_of_order_units_restart_the_pipeline(reference):
    model, expected = reference
    model = copy.deepcopy(model)
    t = FakeTransport(lazy=True)
    handle = wrap_for_offload(model, OffloadConfig(mode="block"), "cpu", transport=t)
    x = toy_inputs(1)
    with torch.no_grad(), handle:
        h = model.patch(x[0])
        angles = x[1][:, None] * model.freqs
        e = model.time(torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)).view(-1, 6, 128)
        model.blocks[0](h, e, x[2])
        model.blocks[2](h, e, x[2])  # skips block 1 (as feature caching would): a restart, not an error
        outs = [model(*toy_inputs(s)) for s in SEEDS]
    assert all(torch.equal(o, r) for o, r in zip(outs, expected))
    assert handle.stats()["restarts"] == 2  # into block 2, then back to block 0
    check_schedule(t)


def test_calling_the_model_begins_lazily_and_a_lone_block_needs_begin(reference):
    model, expected = reference
    model = copy.deepcopy(model)
    handle = wrap_for_offload(model, OffloadConfig(mode="block"), "cpu", transport=FakeTransport())
    x = toy_inputs(1)
    with pytest.raises(RuntimeError, match="with handle:"), torch.no_grad():
        model.blocks[0](model.patch(x[0]), torch.zeros(1, 6, 128), x[2])
    with torch.no_grad():
        assert torch.equal(handle(*x), expected[0])  # the handle stands where the model stood
    assert handle.active and handle.stats()["begins"] == 1
    handle.end()
    with pytest.raises(TypeError, match="deep-copied"):
        copy.deepcopy(model)


def test_one_offloaded_model_on_a_device_at_a_time(reference):
    """Two experts (Wan2.2): starting one ends the other, which begins again when called."""
    model, expected = reference
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    ha = wrap_for_offload(a, OffloadConfig(mode="model"), "cpu", transport=FakeTransport())
    hb = wrap_for_offload(b, OffloadConfig(mode="phase"), "cpu", transport=FakeTransport())
    with torch.no_grad():
        outs = [ha(*toy_inputs(1)), hb(*toy_inputs(2)), ha(*toy_inputs(3))]
    assert [torch.equal(o, e) for o, e in zip(outs, expected)] == [True, True, True]
    assert ha.active and not hb.active and ha.stats()["begins"] == 2 and hb.stats()["begins"] == 1


def test_auto_must_be_resolved_first(reference):
    with pytest.raises(ValueError, match="resolve `auto`"):
        wrap_for_offload(copy.deepcopy(reference[0]), OffloadConfig(mode="auto"), "cpu",
                         transport=FakeTransport())


def test_stats_count_bytes_and_home_is_host(reference):
    model, _ = reference
    model = copy.deepcopy(model)
    outs, t, handle = run(model, "block")
    stats = handle.stats()
    unit_bytes = [u.nbytes for u in handle.units]
    assert stats["bytes_per_forward"] == sum(unit_bytes)
    # every forward moves every block once; the last forward also prefetched the next forward's first block
    assert stats["bytes_moved"] == len(SEEDS) * sum(unit_bytes) + unit_bytes[0] + handle.non_block.nbytes
    assert stats["device_weight_bytes"] == handle.non_block.nbytes + 2 * max(unit_bytes)
    exact = handle.non_block.nbytes + sum(unit_bytes)
    assert exact <= stats["host_weight_bytes"] < exact + 4096 * 5  # host arenas are whole pages
    host = [(u.host.data_ptr(), u.host.data_ptr() + u.host.numel()) for u in handle.units]
    w = model.blocks[1].self_attn.q.weight
    assert host[1][0] <= w.data_ptr() < host[1][1]  # after end(), block 1 points at its host arena again
    assert len(t.pinned) == 5
    handle.close()
    assert t.pinned == []


@pytest.mark.parametrize("bug", ["no_compute_wait", "no_copy_wait"])
def test_checker_catches_missing_waits(reference, bug):
    """Drop one kind of wait: the happens-before check fails (and, executed lazily, the output is wrong)."""
    model, expected = reference

    class Buggy(FakeTransport):
        def wait(self, stream, event):
            if stream == {"no_compute_wait": "compute", "no_copy_wait": "copy"}[bug]:
                return
            super().wait(stream, event)

    t = Buggy(lazy=True)
    m = copy.deepcopy(model)
    handle = wrap_for_offload(m, OffloadConfig(mode="block"), "cpu", transport=t)
    with torch.no_grad(), handle:
        outs = [m(*toy_inputs(s)) for s in SEEDS]
    expected_error = "may compute before" if bug == "no_compute_wait" else "may overwrite"
    with pytest.raises(AssertionError, match=expected_error):
        check_schedule(t)
    if bug == "no_compute_wait":
        assert not all(torch.equal(o, r) for o, r in zip(outs, expected))


def test_wrapping_twice_needs_close_first(reference):
    model = copy.deepcopy(reference[0])
    handle = wrap_for_offload(model, OffloadConfig(mode="block"), "cpu", transport=FakeTransport())
    with pytest.raises(RuntimeError, match="already offloaded"):
        wrap_for_offload(model, OffloadConfig(mode="phase"), "cpu", transport=FakeTransport())
    handle.close()
    handle.close()  # idempotent
    again = wrap_for_offload(model, OffloadConfig(mode="phase"), "cpu", transport=FakeTransport())
    with torch.no_grad(), again:
        out = model(*toy_inputs(1))
    assert torch.equal(out, reference[1][0])
