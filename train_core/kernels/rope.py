"""Rotary position embedding (rotate-half form) from per-token positions, in place or out of place.

One launch rotates every head of a token (Q and K heads side by side in the fused QKV output); the
angles are computed in fp32 from the position and the inverse frequencies, so packed sequences with
positions restarting per sample need no cos/sin tables. The backward of a rotation is the rotation
by the negative angle (`inverse=True`).
"""
from __future__ import annotations

import functools

import torch

from train_core.kernels import use_triton


def rope_reference(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """Rotate (tokens, heads, head_dim) by position * inv_freq, in fp32, rounded once to x's dtype."""
    angles = positions.float()[:, None] * inv_freq.float()[None, :]
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]
    if inverse:
        sin = -sin
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def apply_rope(
    x: torch.Tensor, out: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, inverse: bool = False
) -> torch.Tensor:
    """Write the rotation of x into out (both (tokens, heads, head_dim), may be the same tensor); returns out."""
    if not use_triton(x):
        return out.copy_(rope_reference(x, positions, inv_freq, inverse))
    tokens, heads, head_dim = x.shape
    if out.stride(2) != 1 or out.stride(1) != head_dim:
        raise ValueError("apply_rope needs the output's heads laid out contiguously within each token")
    if x.stride(2) != 1 or x.stride(1) != head_dim:
        x = x.contiguous()
    heads_per_program = 4
    half = head_dim // 2
    grid = (tokens, -(-heads // heads_per_program))
    _kernel()[grid](
        x, out, positions, inv_freq, x.stride(0), out.stride(0), heads, half, -1.0 if inverse else 1.0,
        HEADS=heads_per_program, HALF=1 << (half - 1).bit_length(), num_warps=2,
    )
    return out


@functools.lru_cache(maxsize=1)
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def rope_kernel(x_ptr, out_ptr, pos_ptr, freq_ptr, x_stride, out_stride, heads, half, sign, HEADS: tl.constexpr, HALF: tl.constexpr):
        token = tl.program_id(0).to(tl.int64)
        head = tl.program_id(1) * HEADS + tl.arange(0, HEADS)
        j = tl.arange(0, HALF)
        angle = tl.load(pos_ptr + token).to(tl.float32) * tl.load(freq_ptr + j, mask=j < half, other=0.0)
        cos = tl.cos(angle)[None, :]
        sin = sign * tl.sin(angle)[None, :]
        mask = (head[:, None] < heads) & (j[None, :] < half)
        offset = head[:, None] * (2 * half) + j[None, :]
        x1 = tl.load(x_ptr + token * x_stride + offset, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(x_ptr + token * x_stride + offset + half, mask=mask, other=0.0).to(tl.float32)
        dtype = out_ptr.dtype.element_ty
        tl.store(out_ptr + token * out_stride + offset, (x1 * cos - x2 * sin).to(dtype), mask=mask)
        tl.store(out_ptr + token * out_stride + offset + half, (x2 * cos + x1 * sin).to(dtype), mask=mask)

    return rope_kernel
