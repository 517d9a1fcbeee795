"""Low-precision (int8 Q.K, fp8 P.V) Triton attention vs fp64 softmax attention."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[2]

# SNR (dB) bars vs fp64 attention on random data with channel offsets. The bf16 SDPA reference
# itself lands at 45-50 dB; int8 Q.K costs little; fp8 P.V costs more (3 mantissa bits).
MIN_SNR = {"int8qk": 33.0, "fp8pv": 24.0}


def _check(results: dict[str, float]) -> None:
    assert results
    for key, snr in results.items():
        assert snr > MIN_SNR[key.rsplit("-", 1)[1]], (key, snr)


def test_lowp_attention_in_triton_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("lowp_cases.py"))], env=env,
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check(json.loads(proc.stdout.strip().splitlines()[-1]))


@pytest.mark.gpu
def test_lowp_attention_cuda():
    from tests.attention.lowp_cases import cases

    shapes = [(1, 4096, 4096, 4, 128), (1, 1000, 512, 8, 128), (2, 77, 300, 2, 64)]
    _check(cases("cuda", torch.bfloat16, shapes))


def test_lowp_attention_rejects_bad_shapes():
    from lightx2v_quant.attention.lowp_triton import lowp_attention

    q = torch.randn(1, 8, 2, 96, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="head_dim"):
        lowp_attention(q, q, q)
