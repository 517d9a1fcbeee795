"""Encoders on demand: weights in host memory, on the device only inside `with`; where each encoder lives."""

import copy

import pytest
import torch
from torch import nn

from lightx2v_quant.config import OffloadConfig
from lightx2v_quant.offload.encoders import OnDemand, encoder_placement
from lightx2v_quant.quant.apply import quantize_model
from tests.offload.fakes import FakeTransport


def encoder() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64), nn.LayerNorm(64)).eval()
    quantize_model(m, "int8-torch", ["0", "2"])
    return m


def test_on_demand_moves_in_and_out_without_changing_results():
    m = encoder()
    ref = copy.deepcopy(m)
    x = torch.randn(3, 64)
    t = FakeTransport()
    od = OnDemand(m, "cpu", transport=t)
    host = (od.host.data_ptr(), od.host.data_ptr() + od.host.numel())
    assert host[0] <= m[0].weight.data_ptr() < host[1]
    with torch.no_grad(), od as module:
        y = module(x)
        assert not host[0] <= m[0].weight.data_ptr() < host[1]  # computing from the device copy
    assert host[0] <= m[3].weight.data_ptr() < host[1]  # back home, nothing copied back
    assert torch.equal(y, ref(x))
    assert od.bytes_moved == od.nbytes and t.pinned == [od.host.data_ptr()]
    with pytest.raises(RuntimeError, match="nested"), od:
        with od:
            pass
    od.close()
    assert t.pinned == []


def test_encoder_placement():
    resident = {"t5": "resident", "clip": "resident", "vae": "resident"}
    assert encoder_placement(OffloadConfig(), "none") == resident
    assert encoder_placement(OffloadConfig(t5_cpu=True), "block") == {"t5": "cpu", "clip": "on_demand",
                                                                      "vae": "on_demand"}
