"""Probe: Wan-14B FFN up-projection at 480p in bf16 on a GPU: F.linear then GELU(tanh) vs cuBLASLt's fused
bias+GELU epilogue (torch._addmm_activation), and fp32 vs bf16 residual add traffic. Prints JSON."""

import json
import sys

import torch
import torch.nn.functional as F
from triton.testing import do_bench

M, K, N = 8192, 5120, 13824
x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) / K**0.5
b = torch.randn(N, device="cuda", dtype=torch.bfloat16)
ref = F.gelu(F.linear(x, w, b), approximate="tanh")
fused = torch._addmm_activation(b, x, w.t(), use_gelu=True)
res = {
    "device": torch.cuda.get_device_name(),
    "linear_then_gelu_ms": do_bench(lambda: F.gelu(F.linear(x, w, b), approximate="tanh"), return_mode="median"),
    "linear_only_ms": do_bench(lambda: F.linear(x, w, b), return_mode="median"),
    "addmm_gelu_ms": do_bench(lambda: torch._addmm_activation(b, x, w.t(), use_gelu=True), return_mode="median"),
    "addmm_gelu_rel_err": float((fused.float() - ref.float()).norm() / ref.float().norm()),
}
L, D = 32760, 5120
for dt in (torch.float32, torch.bfloat16):
    r = torch.randn(L, D, device="cuda", dtype=dt)
    y = torch.randn(L, D, device="cuda", dtype=torch.bfloat16)
    g = torch.randn(D, device="cuda")
    res[f"residual_add_{dt}_ms"] = do_bench(lambda: r.add_(y * g), return_mode="median")
json.dump(res, sys.stdout, indent=1)
