"""GeGLU (tanh-approximated GELU) on a fused gate|up projection output: h = gelu_tanh(e) * g, and an in-place
backward. Same layout and contract as swiglu.py: eg is (tokens, 2 * inter), gate first; the backward overwrites
eg with [de | dg]. Gemma's MLP (hidden_activation gelu_pytorch_tanh) uses it."""
from __future__ import annotations

import functools
import math

import torch

from train_core.kernels import use_triton

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
CUBIC = 0.044715


def geglu_reference(eg: torch.Tensor) -> torch.Tensor:
    """gelu_tanh(e) rounded to eg's dtype, times g, as Hugging Face's act_fn(gate) * up computes it."""
    e, g = eg.chunk(2, dim=-1)
    gelu = torch.nn.functional.gelu(e.float(), approximate="tanh").to(eg.dtype)
    return (gelu.float() * g.float()).to(eg.dtype)


def geglu_backward_reference(grad: torch.Tensor, eg: torch.Tensor) -> torch.Tensor:
    """[de | dg] for h = gelu_tanh(e) * g, computed in fp32 and written over eg."""
    e, g = (t.float() for t in eg.chunk(2, dim=-1))
    inner = SQRT_2_OVER_PI * (e + CUBIC * e**3)
    t = torch.tanh(inner)
    gelu = (0.5 * e * (1 + t)).to(eg.dtype).float()
    slope = 0.5 * (1 + t) + 0.5 * e * (1 - t * t) * SQRT_2_OVER_PI * (1 + 3 * CUBIC * e * e)
    dg = grad.float() * gelu
    de = grad.float() * g * slope
    return eg.copy_(torch.cat([de, dg], dim=-1))


def geglu(eg: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """h (tokens, inter) from contiguous eg (tokens, 2 * inter)."""
    tokens, width = eg.shape
    out = torch.empty(tokens, width // 2, dtype=eg.dtype, device=eg.device) if out is None else out
    if not use_triton(eg):
        return out.copy_(geglu_reference(eg))
    _launch(_kernels()[0], eg, out)
    return out


def geglu_backward_(grad: torch.Tensor, eg: torch.Tensor) -> torch.Tensor:
    """Overwrite eg with [de | dg] given grad = dL/dh; returns eg."""
    if not use_triton(eg):
        return geglu_backward_reference(grad, eg)
    _launch(_kernels()[1], eg, grad.contiguous())
    return eg


def _launch(kernel, eg: torch.Tensor, other: torch.Tensor) -> None:
    if not eg.is_contiguous():
        raise ValueError("geglu needs a contiguous gate|up tensor")
    tokens, width = eg.shape
    inter = width // 2
    block = 1024
    kernel[(tokens, -(-inter // block))](eg, other, inter, SQRT_2_OVER_PI, CUBIC, BLOCK=block, num_warps=4)


@functools.lru_cache(maxsize=1)
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def geglu_forward(eg_ptr, h_ptr, inter, k0, k1, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < inter
        e = tl.load(eg_ptr + row * 2 * inter + cols, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(eg_ptr + row * 2 * inter + inter + cols, mask=mask, other=0.0).to(tl.float32)
        dtype = h_ptr.dtype.element_ty
        t = 2.0 * tl.sigmoid(2.0 * k0 * (e + k1 * e * e * e)) - 1.0  # tanh
        gelu = (0.5 * e * (1.0 + t)).to(dtype).to(tl.float32)
        tl.store(h_ptr + row * inter + cols, (gelu * g).to(dtype), mask=mask)

    @triton.jit
    def geglu_backward(eg_ptr, grad_ptr, inter, k0, k1, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < inter
        e = tl.load(eg_ptr + row * 2 * inter + cols, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(eg_ptr + row * 2 * inter + inter + cols, mask=mask, other=0.0).to(tl.float32)
        grad = tl.load(grad_ptr + row * inter + cols, mask=mask, other=0.0).to(tl.float32)
        dtype = eg_ptr.dtype.element_ty
        t = 2.0 * tl.sigmoid(2.0 * k0 * (e + k1 * e * e * e)) - 1.0  # tanh
        gelu = (0.5 * e * (1.0 + t)).to(dtype).to(tl.float32)
        slope = 0.5 * (1.0 + t) + 0.5 * e * (1.0 - t * t) * k0 * (1.0 + 3.0 * k1 * e * e)
        tl.store(eg_ptr + row * 2 * inter + cols, (grad * g * slope).to(dtype), mask=mask)
        tl.store(eg_ptr + row * 2 * inter + inter + cols, (grad * gelu).to(dtype), mask=mask)

    return geglu_forward, geglu_backward
