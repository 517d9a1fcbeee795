"""Cases for the fused GELU(tanh) + per-token quantization kernel vs the unfused numerics (F.gelu, then the
format's per-token quantization); run in Triton's interpreter by the tests (a subprocess with
TRITON_INTERPRET=1) and directly on CUDA."""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F

from lightx2v_quant.fused import gelu as fg


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def hidden(shape: tuple[int, ...], dtype: torch.dtype, device: str, seed: int = 0) -> torch.Tensor:
    """A realistic FFN pre-activation: N(0, 2^2) with a few large outliers per row."""
    h = torch.randn(*shape, generator=_gen(seed)) * 2
    h.view(-1, shape[-1])[:, :: max(1, shape[-1] // 3)] *= 6
    return h.to(dtype).to(device)


def gelu_mismatch(device: str, dtype: torch.dtype, n: int = 1 << 20) -> dict[str, float]:
    """Share of n values of N(0, 3^2) whose kernel GELU differs from ``F.gelu(approximate="tanh")`` in
    ``dtype`` (bitwise), and the largest difference."""
    h = (torch.randn(n, generator=_gen(1)) * 3).to(dtype).to(device)
    y, ref = fg.gelu_values(h).float(), F.gelu(h, approximate="tanh").float()
    return {"gelu_mismatch": float((y != ref).double().mean()), "gelu_maxdiff": float((y - ref).abs().max())}


def quant_cases(device: str, dtype: torch.dtype, shape: tuple[int, ...], **launch_kw) -> dict[str, float]:
    """gelu_quantize (or, with launch_kw, the raw launcher: tiled=False, num_warps) vs the reference."""
    h = hidden(shape, dtype, device)
    res = {}
    for quant in ("fp8", "int8"):
        ref = fg.gelu_quantize_reference(h, quant)
        if launch_kw:
            q, s = fg._empty_outputs(h, quant)
            fg.launch(h, q, s, quant, **launch_kw)
            out = fg.QuantizedActivation(q, s, h.dtype)
        else:
            out = fg.gelu_quantize(h, quant)
        assert out.data.shape == h.shape and out.data.dtype == ref.data.dtype, (
            out.data.shape,
            out.data.dtype,
        )
        assert out.scale.shape == (*h.shape[:-1], 1) and out.dtype == h.dtype
        res[f"{quant}_mismatch"] = float((out.data.float() != ref.data.float()).double().mean())
        res[f"{quant}_scale_rel"] = float(((out.scale - ref.scale).abs() / ref.scale).max())
        a, b = out.dequantize().double(), ref.dequantize().double()
        res[f"{quant}_deq_err"] = float((a - b).norm() / b.norm())
    return res


def strided_case(device: str, dtype: torch.dtype) -> dict[str, float]:
    """A [B, L, F] view whose rows are not packed (stride(1) > F) gives what its contiguous copy gives."""
    big = hidden((2, 5, 160), dtype, device)
    h = big[:, :, :100]
    out = fg.gelu_quantize(h, "int8")
    ref = fg.gelu_quantize(h.contiguous(), "int8")
    return {
        "strided_mismatch": float(
            (out.data != ref.data).double().mean() + (out.scale != ref.scale).double().mean()
        )
    }


def fake_case() -> dict[str, float]:
    """The custom op's fake (meta) implementation gives the real one's shapes and dtypes."""
    h = torch.empty(2, 7, 96, dtype=torch.bfloat16, device="meta")
    q, s = fg._gelu_quant_op(h, "fp8")
    ok = (
        q.shape == h.shape
        and q.dtype == torch.float8_e4m3fn
        and s.shape == (2, 7, 1)
        and s.dtype == torch.float32
    )
    return {"fake_shapes_wrong": float(not ok)}


def compile_case(device: str, backend: str) -> dict[str, float]:
    """torch.compile(fullgraph=True) of a function calling gelu_quantize: no graph break, same bytes."""
    h = hidden((2, 3, 200), torch.bfloat16, device)
    fn = torch.compile(lambda t: fg.gelu_quantize(t, "int8"), fullgraph=True, backend=backend)
    out, ref = fn(h), fg.gelu_quantize(h, "int8")
    torch._dynamo.reset()
    return {
        "compiled_mismatch": float(
            (out.data != ref.data).double().mean() + (out.scale != ref.scale).double().mean()
        )
    }


if __name__ == "__main__":
    # interpreter: small shapes; F not a power of two (ragged tiles), M = 1, the two-sweep kernel forced
    out = {}
    for dtype, tag in ((torch.bfloat16, "bf16"), (torch.float16, "fp16")):
        out.update({f"{tag}:{k}": v for k, v in gelu_mismatch("cpu", dtype).items()})
        out.update({f"{tag}_3d:{k}": v for k, v in quant_cases("cpu", dtype, (2, 3, 1000)).items()})
        out.update({f"{tag}_m1:{k}": v for k, v in quant_cases("cpu", dtype, (1, 1, 1000)).items()})
        out.update({f"{tag}_2d:{k}": v for k, v in quant_cases("cpu", dtype, (5, 77)).items()})
        out.update(
            {
                f"{tag}_long:{k}": v
                for k, v in quant_cases("cpu", dtype, (3, 1000), tiled=False, num_warps=1).items()
            }
        )
    # one warp: tiles of G = 256 bf16 -> K = 1790 is held as tiles of 4, 2, 1 rows, K = 3800 as 8, 4, 2, 1
    for k in (1790, 3800):
        out.update(
            {f"bf16_k{k}:{n}": v for n, v in quant_cases("cpu", torch.bfloat16, (2, k), num_warps=1).items()}
        )
    out.update(strided_case("cpu", torch.bfloat16))
    out.update(fake_case())
    out.update(compile_case("cpu", "aot_eager"))  # aot_eager traces like inductor without compiling C++
    print(json.dumps(out))
    sys.stdout.flush()
