"""End-to-end pipeline benchmark: one `run.py -m` sweep over DIT schemes, its summary saved as JSON with
the device name.

    python benchmarks/bench_pipeline.py --out benchmarks/results/pipeline_h100_1.3b_480p.json \
        --schemes none,fp8-torch,fp8-triton,fp8-sgl,fp8-vllm,int8-vllm -- model=wan2.1-t2v-1.3b task=480p

Everything after `--` is passed to run.py (model, task, sampler.steps, report.reference=true, ...).
Weights are random unless model.path is given; the JSON says which.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--schemes", default="none,auto", help="comma-separated dit_quant options")
    args = parser.parse_args(own)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            str(ROOT / "run.py"),
            "-m",
            f"dit_quant={args.schemes}",
            *extra,
            f"hydra.sweep.dir={tmp}",
        ]
        start = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True, check=False)
        wall = time.time() - start
        summary_path = Path(tmp) / "summary.json"
        if not summary_path.is_file():
            print(proc.stdout[-5000:], proc.stderr[-5000:], sep="\n", file=sys.stderr)
            return proc.returncode or 1
        rows = json.loads(summary_path.read_text())["jobs"]
        reports = {}
        for row in rows:
            report = Path(row["output_dir"] or "") / "report.json"
            if report.is_file():
                reports[row["job"]] = json.loads(report.read_text())
    first = next(iter(reports.values()), {})
    result = {
        "benchmark": "pipeline sweep (run.py -m)",
        "device": device_name(),
        "command": " ".join(cmd[1:-1]),
        "random_weights": first.get("random_weights"),
        "sweep_wall_s": round(wall, 2),
        "jobs": rows,
        "reports": reports,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    for r in rows:
        print(
            f"{r['overrides']:50s} {r['status']:8s} step {r['step_s']} s  peak GPU {r['peak_gpu_gib']} GiB  "
            f"DIT {r['dit_weight_gib']} GiB  PSNR {r['psnr_db']}"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
