"""RMSNorm with a frozen weight: fp32 statistics, Llama/Qwen rounding or Gemma's (1 + w), and a backward that
computes only dX."""
from __future__ import annotations

import functools

import torch

from train_core.kernels import use_triton


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float, unit_offset: bool = False) -> torch.Tensor:
    """weight * (x / rms(x)) with the normalised value rounded to x's dtype first, as Hugging Face's Llama does;
    with `unit_offset`, (1 + weight) * (x / rms(x)) all in fp32 and rounded once, as Gemma's RMSNorm does."""
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if unit_offset:
        return (normed * (1.0 + weight.float())).to(x.dtype)
    return (weight.float() * normed.to(x.dtype).float()).to(x.dtype)


class RMSNorm(torch.autograd.Function):
    """Triton forward (saving x and the per-row 1/rms) and backward for a 2-D (rows, hidden) input."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float, unit_offset: bool) -> torch.Tensor:
        x = x.contiguous()
        rows, hidden = x.shape
        out = torch.empty_like(x)
        rstd = torch.empty(rows, dtype=torch.float32, device=x.device)
        block = _block(hidden)
        _kernels()[0][(rows,)](
            x, weight, out, rstd, hidden, eps, UNIT_OFFSET=unit_offset, BLOCK=block, num_warps=_warps(block)
        )
        ctx.unit_offset = unit_offset
        ctx.save_for_backward(x, weight, rstd)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        rows, hidden = x.shape
        grad = grad.contiguous()
        dx = torch.empty_like(x)
        block = _block(hidden)
        _kernels()[1][(rows,)](
            grad, x, weight, rstd, dx, hidden, UNIT_OFFSET=ctx.unit_offset, BLOCK=block, num_warps=_warps(block)
        )
        return dx, None, None, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, unit_offset: bool = False) -> torch.Tensor:
    """RMSNorm of a (rows, hidden) tensor: the Triton Function on CUDA, else the reference."""
    if use_triton(x):
        return RMSNorm.apply(x, weight, eps, unit_offset)
    return rms_norm_reference(x, weight, eps, unit_offset)


def _block(hidden: int) -> int:
    return 1 << (hidden - 1).bit_length()


def _warps(block: int) -> int:
    return min(16, max(4, block // 512))


@functools.lru_cache(maxsize=1)
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def rms_norm_forward(x_ptr, w_ptr, out_ptr, rstd_ptr, hidden, eps, UNIT_OFFSET: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < hidden
        x = tl.load(x_ptr + row * hidden + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / hidden + eps)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        if UNIT_OFFSET:
            normed = x * rstd
            w = w + 1.0
        else:
            normed = (x * rstd).to(out_ptr.dtype.element_ty).to(tl.float32)
        tl.store(out_ptr + row * hidden + cols, (w * normed).to(out_ptr.dtype.element_ty), mask=mask)
        tl.store(rstd_ptr + row, rstd)

    @triton.jit
    def rms_norm_backward(grad_ptr, x_ptr, w_ptr, rstd_ptr, dx_ptr, hidden, UNIT_OFFSET: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < hidden
        grad = tl.load(grad_ptr + row * hidden + cols, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + row * hidden + cols, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        if UNIT_OFFSET:
            w = w + 1.0
        rstd = tl.load(rstd_ptr + row)
        normed = x * rstd
        scaled = grad * w
        dot = tl.sum(scaled * normed, axis=0) / hidden
        tl.store(dx_ptr + row * hidden + cols, (rstd * (scaled - normed * dot)).to(dx_ptr.dtype.element_ty), mask=mask)

    return rms_norm_forward, rms_norm_backward
