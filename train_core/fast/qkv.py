"""The fused q|k|v LoRA projection with rotary embedding applied in place on its output.

Optionally each query and key head is RMS-normalised before the rotation (Qwen3, Gemma 3), and the rotated
q and k are scaled (longrope's attention factor). Saves only x; with head norms, backward recomputes the
projection to differentiate through them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from train_core.fast.lora import LoRAGroup
from train_core.kernels.rms_norm import rms_norm
from train_core.kernels.rope import apply_rope


@dataclass
class HeadNorms:
    """Frozen RMSNorm weights over head_dim for the query and the key heads."""

    query: torch.Tensor
    key: torch.Tensor
    eps: float
    unit_offset: bool  # Gemma's (1 + w)

    def apply(self, heads: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """(tokens, n, head_dim) normalised per head (a new tensor)."""
        flat = heads.reshape(-1, heads.shape[-1])
        return rms_norm(flat, weight, self.eps, self.unit_offset).view(heads.shape)


class QKVRope(torch.autograd.Function):
    """x -> (q, k, v) as (tokens, heads, head_dim) views of one GEMM output; q and k rotated. Saves only x."""

    @staticmethod
    def forward(ctx, x, positions, inv_freq, group: LoRAGroup, heads: int, kv_heads: int, norms: HeadNorms | None,
                scaling: float, *params):
        tokens = x.shape[0]
        out = group.project(x, params, None, slot=0)
        qkv = out.view(tokens, heads + 2 * kv_heads, -1)
        rotated = qkv[:, : heads + kv_heads]
        if norms is not None:
            qkv[:, :heads] = norms.apply(qkv[:, :heads], norms.query)
            qkv[:, heads : heads + kv_heads] = norms.apply(qkv[:, heads : heads + kv_heads], norms.key)
        apply_rope(rotated, rotated, positions, inv_freq)
        if scaling != 1.0:
            rotated.mul_(scaling)
        ctx.group, ctx.heads, ctx.kv_heads, ctx.norms, ctx.scaling = group, heads, kv_heads, norms, scaling
        ctx.save_for_backward(x, positions, inv_freq, *params)
        return qkv[:, :heads], qkv[:, heads : heads + kv_heads], qkv[:, heads + kv_heads :]

    @staticmethod
    def backward(ctx, grad_q, grad_k, grad_v):
        x, positions, inv_freq, *params = ctx.saved_tensors
        heads, kv_heads, norms = ctx.heads, ctx.kv_heads, ctx.norms
        grad = torch.empty(x.shape[0], ctx.group.shape[0], dtype=x.dtype, device=x.device)
        split = grad.view(x.shape[0], heads + 2 * kv_heads, -1)
        for part, incoming, inverse in (
            (split[:, :heads], grad_q, True),
            (split[:, heads : heads + kv_heads], grad_k, True),
            (split[:, heads + kv_heads :], grad_v, False),
        ):
            if incoming is None:
                part.zero_()
            elif inverse:
                apply_rope(incoming, part, positions, inv_freq, inverse=True)
                if ctx.scaling != 1.0:
                    part.mul_(ctx.scaling)
            else:
                part.copy_(incoming)
        if norms is not None:
            _through_head_norms(x, tuple(params), ctx.group, split, heads, kv_heads, norms)
        grad_x, grads = ctx.group.backward(x, grad, tuple(params), ctx.needs_input_grad[0], slot=0)
        return (grad_x, None, None, None, None, None, None, None, *grads)


def _through_head_norms(
    x: torch.Tensor, params: tuple[torch.Tensor, ...], group: LoRAGroup, split: torch.Tensor, heads: int, kv_heads: int,
    norms: HeadNorms,
) -> None:
    """Turn the gradients of the normalised q and k in `split` into those of the projection's output, in place."""
    pre = group.project(x, params, None, slot=0).view_as(split)
    for rows, weight in ((slice(0, heads), norms.query), (slice(heads, heads + kv_heads), norms.key)):
        leaf = pre[:, rows].detach().requires_grad_()
        with torch.enable_grad():
            normed = norms.apply(leaf, weight)
        (grad_pre,) = torch.autograd.grad(normed, leaf, split[:, rows])
        split[:, rows] = grad_pre


def qkv_rope(
    x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, group: LoRAGroup, heads: int, kv_heads: int,
    params: tuple[torch.Tensor, ...], norms: HeadNorms | None = None, scaling: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return QKVRope.apply(x, positions, inv_freq, group, heads, kv_heads, norms, scaling, *params)
