"""The fused q|k|v LoRA projection with rotary embedding applied in place on its output."""
from __future__ import annotations

import torch

from train_core.fast.lora import LoRAGroup
from train_core.kernels.rope import apply_rope


class QKVRope(torch.autograd.Function):
    """x -> (q, k, v) as (tokens, heads, head_dim) views of one GEMM output; q and k rotated. Saves only x."""

    @staticmethod
    def forward(ctx, x, positions, inv_freq, group: LoRAGroup, heads: int, kv_heads: int, *params):
        tokens = x.shape[0]
        out = group.project(x, params, None, slot=0)
        qkv = out.view(tokens, heads + 2 * kv_heads, -1)
        rotated = qkv[:, : heads + kv_heads]
        apply_rope(rotated, rotated, positions, inv_freq)
        ctx.group, ctx.heads, ctx.kv_heads = group, heads, kv_heads
        ctx.save_for_backward(x, positions, inv_freq, *params)
        return qkv[:, :heads], qkv[:, heads : heads + kv_heads], qkv[:, heads + kv_heads :]

    @staticmethod
    def backward(ctx, grad_q, grad_k, grad_v):
        x, positions, inv_freq, *params = ctx.saved_tensors
        heads, kv_heads = ctx.heads, ctx.kv_heads
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
            else:
                part.copy_(incoming)
        grad_x, grads = ctx.group.backward(x, grad, tuple(params), ctx.needs_input_grad[0], slot=0)
        return (grad_x, None, None, None, None, None, *grads)


def qkv_rope(
    x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, group: LoRAGroup, heads: int, kv_heads: int,
    params: tuple[torch.Tensor, ...],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return QKVRope.apply(x, positions, inv_freq, group, heads, kv_heads, *params)
