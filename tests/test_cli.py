"""run.py from the command line: fast, clear failures before any weight is loaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def run_py(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_scheme_for_a_gpu_fails_early_on_cpu(tmp_path):
    proc = run_py("dit_quant=fp8-sgl", "hardware=h100", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2, proc.stderr
    assert "hardware=h100" in proc.stderr and "dit_quant=fp8-sgl" in proc.stderr
    assert "fp8-torch" in proc.stderr  # the runnable alternative
    assert "Traceback" not in proc.stderr  # one message, not a stack
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "invalid"


def test_typo_lists_the_options(tmp_path):
    proc = run_py("dit_quant=fp8-sglx", f"hydra.run.dir={tmp_path}")
    assert proc.returncode != 0
    assert "Could not find 'dit_quant/fp8-sglx'" in proc.stderr
    assert "fp8-sgl" in proc.stderr and "int8-torch" in proc.stderr
