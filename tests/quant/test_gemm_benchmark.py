"""Smoke test of benchmarks/gemm.py on CPU: tiny shapes, CPU kernels, the report it writes.

The benchmark is meant for a GPU; ``--device cpu`` exists so this test can run its whole flow
(availability table, per-shape runs, GEMM-alone split, JSON + markdown) in a second.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def gemm(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    spec = importlib.util.spec_from_file_location("gemm_benchmark_under_test", BENCH_DIR / "gemm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_shapes_are_listed(gemm):
    names = {(g, layer) for g, layer, *_ in gemm.SHAPES}
    assert gemm.QUICK <= names and gemm.PEER_COMPILED <= names
    assert ("wan14b-480p", "ffn-up", 32760, 13824, 5120) in gemm.SHAPES
    assert ("wan14b-720p", "qkvo", 75600, 5120, 5120) in gemm.SHAPES


def test_cpu_smoke_run_writes_json_and_markdown(gemm, monkeypatch, tmp_path):
    tiny = [
        ("wan14b-480p", "qkvo", 40, 64, 128),
        ("t5", "ffn-up", 8, 96, 256),
        ("clip", "mlp-up", 17, 80, 256),
    ]
    monkeypatch.setattr(gemm, "SHAPES", tiny)
    monkeypatch.setattr(gemm, "QUICK", {(g, layer) for g, layer, *_ in tiny})
    rc = gemm.main(
        [
            "--out",
            str(tmp_path),
            "--device",
            "cpu",
            "--quick",
            "--target-s",
            "0.002",
            "--no-compile",
            "--schemes",
            "int8-torch,int8-torchao,int8-vllm,fp8-b128-torch",
        ]
    )
    assert rc == 0
    data = json.loads((tmp_path / "gemm_quick_cpu.json").read_text())
    assert data["schemes"]["int8-vllm"]["available"] is False and data["schemes"]["int8-vllm"]["reason"]
    assert set(data["schemes"]) == {"int8-torch", "int8-torchao", "int8-vllm", "fp8-b128-torch"}
    rows = {(r["group"], r["scheme"], r["mode"]) for r in data["results"]}
    assert ("t5", "bf16 F.linear", "forward") in rows
    assert ("wan14b-480p", "int8-torch", "forward") in rows
    if data["schemes"]["int8-torchao"]["available"]:  # torchao is an Adapter: its GEMM is also timed alone
        assert ("clip", "int8-torchao", "gemm") in rows
    for r in data["results"]:
        assert r["median_ms"] > 0 and r["speedup_vs_bf16"] > 0 and r["iters"] >= 5
        if r["scheme"] != "bf16 F.linear" and r["mode"] == "forward":
            assert r["rel_err_vs_bf16"] < 0.05
    md = (tmp_path / "gemm_quick_cpu.md").read_text()
    assert "GEMM alone" in md and "| int8-torch |" in md and "Schemes on this machine" in md
    assert "Geometric mean over the three 14B 480p shapes" in md


def test_needs_cuda_unless_cpu_is_asked(gemm, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert gemm.main(["--out", str(tmp_path)]) == 2
