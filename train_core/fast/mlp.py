"""The gated MLP block with LoRA on gate, up and down: residual + down(act(gate(x)) * up(x)), act = silu (SwiGLU)
or tanh-approximated GELU (GeGLU, Gemma). Without a residual (Gemma normalises the MLP's output before adding
it) the output is the MLP's alone.

Saves x and the gate|up output only; h = silu(e) * g is recomputed in backward, and the backward
reuses buffers in place (h becomes dL/dh, gate|up becomes [de | dg]). With `tile_rows` the block runs
over row tiles and saves only x, recomputing each tile's gate|up in backward: the working set is one
tile's intermediates, which is what long contexts need. With `defer` (a checkpointed layer's recompute,
whose output nobody reads) the forward computes nothing and backward does all the work from x.
"""
from __future__ import annotations

import torch

from train_core.fast.lora import LoRAGroup
from train_core.kernels.geglu import geglu, geglu_backward_
from train_core.kernels.swiglu import swiglu, swiglu_backward_

GATES = {"silu": (swiglu, swiglu_backward_), "gelu_tanh": (geglu, geglu_backward_)}


class LoRAMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, gate_up: LoRAGroup, down: LoRAGroup, split: int, tile_rows, defer: bool, activation: str, *params):
        ctx.groups, ctx.split, ctx.tile, ctx.count = (gate_up, down), split, tile_rows, len(params)
        ctx.keep = tile_rows is None and not defer
        ctx.activation, ctx.has_residual = activation, residual is not None
        gate, _ = GATES[activation]
        out = torch.empty_like(x)
        if defer:
            ctx.save_for_backward(x, *params)
            return out
        gate_up_params, down_params = params[:split], params[split:]
        w_gate_up = gate_up.merged_weight(gate_up_params, slot=0)
        w_down = down.merged_weight(down_params, slot=1)
        tokens = x.shape[0]
        tile = tile_rows or tokens
        gate_up_out = None
        for start in range(0, tokens, tile):
            rows = slice(start, start + tile)
            gate_up_out = x[rows] @ w_gate_up.t()
            if residual is None:
                torch.mm(gate(gate_up_out), w_down.t(), out=out[rows])
            else:
                torch.addmm(residual[rows], gate(gate_up_out), w_down.t(), out=out[rows])
        ctx.save_for_backward(x, *params, *((gate_up_out,) if ctx.keep else ()))
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        gate_up, down = ctx.groups
        gate, gate_backward_ = GATES[ctx.activation]
        saved = ctx.saved_tensors
        x, params = saved[0], saved[1 : 1 + ctx.count]
        kept = saved[1 + ctx.count] if ctx.keep else None
        gate_up_params, down_params = params[: ctx.split], params[ctx.split :]
        grad = grad.contiguous()
        w_gate_up = gate_up.merged_weight(gate_up_params, slot=0)
        w_down = down.merged_weight(down_params, slot=1)
        need_x = ctx.needs_input_grad[0]
        grad_x = torch.empty_like(x) if need_x else None
        tokens = x.shape[0]
        tile = ctx.tile or tokens
        totals: list[torch.Tensor] | None = None
        for start in range(0, tokens, tile):
            rows = slice(start, start + tile)
            gate_up_out = kept if kept is not None else x[rows] @ w_gate_up.t()
            h = gate(gate_up_out)
            tile_grads = down.adapter_grads(h, grad[rows], down_params) if down_params else []
            grad_h = torch.mm(grad[rows], w_down, out=h)
            gate_backward_(grad_h, gate_up_out)
            tile_grads = (gate_up.adapter_grads(x[rows], gate_up_out, gate_up_params) if gate_up_params else []) + tile_grads
            if need_x:
                torch.mm(gate_up_out, w_gate_up, out=grad_x[rows])
            totals = tile_grads if totals is None else [t.add_(g) for t, g in zip(totals, tile_grads)]
        return (grad_x, grad if ctx.has_residual else None, None, None, None, None, None, None, *(totals or []))


def lora_mlp(
    x: torch.Tensor, residual: torch.Tensor | None, gate_up: LoRAGroup, down: LoRAGroup,
    gate_up_params: tuple[torch.Tensor, ...], down_params: tuple[torch.Tensor, ...], tile_rows: int | None = None,
    defer: bool = False, activation: str = "silu",
) -> torch.Tensor:
    return LoRAMLP.apply(x, residual, gate_up, down, len(gate_up_params), tile_rows, defer, activation, *gate_up_params, *down_params)
