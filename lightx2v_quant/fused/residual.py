"""The gated residual add of the Wan DIT block, ``x += y * gate`` in fp32, in place, in one Triton pass over
the residual stream (fp32, or bf16 with ``speed.residual=run_dtype``); ``gated_residual_reference`` is the
official numerics in PyTorch ops."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lightx2v_quant.fused.norm import _mod_strides


@triton.jit
def _gated_residual_kernel(
    x_ptr,
    y_ptr,
    gate_ptr,
    out_ptr,
    L,
    D,
    stride_xb,
    stride_xl,
    stride_yb,
    stride_yl,
    stride_gb,
    stride_gl,
    stride_ob,
    stride_ol,
    BLOCK_D: tl.constexpr,
    GATE: tl.constexpr,
):
    """out = x + y * gate in fp32 (gate omitted: out = x + y), one token per program, stored in out's
    dtype. out may be x (in place: each program reads its row before writing it)."""
    row = tl.program_id(0)
    b = row // L
    t = row % L
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    x = tl.load(x_ptr + b * stride_xb + t * stride_xl + cols, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + b * stride_yb + t * stride_yl + cols, mask=mask, other=0.0).to(tl.float32)
    if GATE:
        g = tl.load(gate_ptr + b * stride_gb + t * stride_gl + cols, mask=mask, other=0.0)
        out = x + y * g
    else:
        out = x + y
    tl.store(out_ptr + b * stride_ob + t * stride_ol + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def _warps(block: int) -> int:
    return max(1, min(16, block // 512))


def gated_residual_(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
    """IN PLACE: ``x += y * gate`` computed in fp32 and stored in x's dtype (fp32 for the official residual
    stream, bf16 for ``speed.residual=run_dtype``). x may be a token slice of the stream (the FFN adds
    its output chunk by chunk). Returns x. In place because a second residual stream is 0.6 GB at 480p."""
    _check_residual(x, y, gate)
    _gated_residual_inplace_op(x, y, gate)
    return x


def _check_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None) -> None:
    B, L, _ = x.shape
    if y.shape != x.shape or x.stride(-1) != 1 or y.stride(-1) != 1:
        raise ValueError(
            f"gated_residual wants x and y of one shape with a contiguous last dim, got "
            f"{list(x.shape)} and {list(y.shape)}"
        )
    if gate is not None:
        _mod_strides(gate, B, L)


@torch.library.custom_op("lightx2v_quant::gated_residual_", mutates_args=("x",))
def _gated_residual_inplace_op(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None) -> None:
    B, L, D = x.shape
    sgb, sgl = _mod_strides(gate, B, L) if gate is not None else (0, 0)
    block = triton.next_power_of_2(D)
    _gated_residual_kernel[(B * L,)](
        x,
        y,
        gate if gate is not None else x,
        x,
        L,
        D,
        x.stride(0),
        x.stride(1),
        y.stride(0),
        y.stride(1),
        sgb,
        sgl,
        x.stride(0),
        x.stride(1),
        BLOCK_D=block,
        GATE=gate is not None,
        num_warps=_warps(block),
    )


@_gated_residual_inplace_op.register_fake
def _(x, y, gate):
    return None


def gated_residual_reference(
    x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None = None
) -> torch.Tensor:
    """x + y * gate (or x + y) in fp32, in x's dtype (what gated_residual_ stores)."""
    return (x.float() + y.float() * gate if gate is not None else x.float() + y.float()).to(x.dtype)
