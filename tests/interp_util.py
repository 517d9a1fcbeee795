"""Run a cases script in Triton's CPU interpreter (a subprocess with TRITON_INTERPRET=1, so the variable
never reaches other tests) and return the JSON dict it prints last."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Triton 3.6's interpreter with NumPy >= 2.4 fails on loops with run-time bounds (seen by the triton tests)
KNOWN_INTERPRETER_FAILURE = "cannot run loops with run-time bounds"


def run_cases(script: Path, timeout: int = 900) -> dict:
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    if KNOWN_INTERPRETER_FAILURE in proc.stderr + proc.stdout:
        pytest.skip(f"Triton's interpreter here {KNOWN_INTERPRETER_FAILURE} (Triton 3.6 + NumPy >= 2.4)")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
