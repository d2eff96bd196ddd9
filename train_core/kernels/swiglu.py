"""SwiGLU on a fused gate|up projection output: h = silu(e) * g, and an in-place backward.

`eg` is (tokens, 2 * inter) with e (gate) in the first half of each row and g (up) in the second, as
one GEMM against the stacked [W_gate; W_up] produces it. The backward overwrites eg with [de | dg], so
the gradient of the stacked projection needs no new buffer.
"""
from __future__ import annotations

import functools

import torch

from train_core.kernels import use_triton


def swiglu_reference(eg: torch.Tensor) -> torch.Tensor:
    """silu(e) rounded to eg's dtype, times g, as Hugging Face's act_fn(gate) * up computes it."""
    e, g = eg.chunk(2, dim=-1)
    return (torch.nn.functional.silu(e.float()).to(eg.dtype).float() * g.float()).to(eg.dtype)


def swiglu_backward_reference(grad: torch.Tensor, eg: torch.Tensor) -> torch.Tensor:
    """[de | dg] for h = silu(e) * g, computed in fp32 and written over eg."""
    e, g = (t.float() for t in eg.chunk(2, dim=-1))
    sig = torch.sigmoid(e)
    silu = (e * sig).to(eg.dtype).float()
    dg = grad.float() * silu
    de = grad.float() * g * sig * (1 + e * (1 - sig))
    return eg.copy_(torch.cat([de, dg], dim=-1))


def swiglu(eg: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """h (tokens, inter) from contiguous eg (tokens, 2 * inter)."""
    tokens, width = eg.shape
    out = torch.empty(tokens, width // 2, dtype=eg.dtype, device=eg.device) if out is None else out
    if not use_triton(eg):
        return out.copy_(swiglu_reference(eg))
    _launch(_kernels()[0], eg, out)
    return out


def swiglu_backward_(grad: torch.Tensor, eg: torch.Tensor) -> torch.Tensor:
    """Overwrite eg with [de | dg] given grad = dL/dh; returns eg."""
    if not use_triton(eg):
        return swiglu_backward_reference(grad, eg)
    _launch(_kernels()[1], eg, grad.contiguous())
    return eg


def _launch(kernel, eg: torch.Tensor, other: torch.Tensor) -> None:
    if not eg.is_contiguous():
        raise ValueError("swiglu needs a contiguous gate|up tensor")
    tokens, width = eg.shape
    inter = width // 2
    block = 1024
    kernel[(tokens, -(-inter // block))](eg, other, inter, BLOCK=block, num_warps=4)


@functools.lru_cache(maxsize=1)
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def swiglu_forward(eg_ptr, h_ptr, inter, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < inter
        e = tl.load(eg_ptr + row * 2 * inter + cols, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(eg_ptr + row * 2 * inter + inter + cols, mask=mask, other=0.0).to(tl.float32)
        dtype = h_ptr.dtype.element_ty
        silu = (e * tl.sigmoid(e)).to(dtype).to(tl.float32)
        tl.store(h_ptr + row * inter + cols, (silu * g).to(dtype), mask=mask)

    @triton.jit
    def swiglu_backward(eg_ptr, grad_ptr, inter, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < inter
        e = tl.load(eg_ptr + row * 2 * inter + cols, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(eg_ptr + row * 2 * inter + inter + cols, mask=mask, other=0.0).to(tl.float32)
        grad = tl.load(grad_ptr + row * inter + cols, mask=mask, other=0.0).to(tl.float32)
        dtype = eg_ptr.dtype.element_ty
        sig = tl.sigmoid(e)
        silu = (e * sig).to(dtype).to(tl.float32)
        tl.store(eg_ptr + row * 2 * inter + cols, (grad * g * sig * (1 + e * (1 - sig))).to(dtype), mask=mask)
        tl.store(eg_ptr + row * 2 * inter + inter + cols, (grad * silu).to(dtype), mask=mask)

    return swiglu_forward, swiglu_backward
