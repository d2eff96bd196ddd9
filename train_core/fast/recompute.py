"""Activation checkpointing per decoder layer: none, full (recompute), or offload (recompute, and keep the
layer inputs in pinned host memory, copied on a side stream while the GPU computes)."""
from __future__ import annotations

from typing import Callable

import torch

MODES = ("none", "full", "offload")


class ActivationOffloader:
    """Pinned host copies of layer inputs: device-to-host in forward, prefetched host-to-device one layer ahead
    in backward, both on a side stream so they overlap the layers' compute."""

    def __init__(self, device: torch.device) -> None:
        self.stream = torch.cuda.Stream(device)
        self.host: dict[int, torch.Tensor] = {}
        self.meta: dict[int, tuple[torch.Size, torch.dtype]] = {}
        self.ready: dict[int, tuple[torch.Tensor, torch.cuda.Event]] = {}

    def put(self, index: int, x: torch.Tensor) -> None:
        numel = x.numel()
        buffer = self.host.get(index)
        if buffer is None or buffer.numel() < numel or buffer.dtype != x.dtype:
            buffer = torch.empty(numel, dtype=x.dtype, pin_memory=True)
            self.host[index] = buffer
        self.stream.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(self.stream):
            buffer[:numel].copy_(x.reshape(-1), non_blocking=True)
        x.record_stream(self.stream)
        self.meta[index] = (x.shape, x.dtype)

    def prefetch(self, index: int) -> None:
        if index in self.ready or index not in self.meta:
            return
        shape, dtype = self.meta[index]
        with torch.cuda.stream(self.stream):
            x = torch.empty(shape, dtype=dtype, device=self.stream.device)
            x.view(-1).copy_(self.host[index][: x.numel()], non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        self.ready[index] = (x, event)

    def take(self, index: int) -> torch.Tensor:
        self.prefetch(index)
        x, event = self.ready.pop(index)
        current = torch.cuda.current_stream(x.device)
        current.wait_event(event)
        x.record_stream(current)
        del self.meta[index]
        return x


class LayerCheckpoint(torch.autograd.Function):
    """Runs `run(x, False)` without keeping its activations; backward restores x, recomputes with
    `run(x, True)` (which may skip computing the output's values) and backpropagates. The layer's adapter
    parameters are inputs so that the output requires grad even when x does not."""

    @staticmethod
    def forward(ctx, x, run: Callable[[torch.Tensor, bool], torch.Tensor], offloader: ActivationOffloader | None, index: int, *params):
        ctx.run, ctx.offloader, ctx.index = run, offloader, index
        with torch.no_grad():
            out = run(x, False)
        if offloader is not None:
            offloader.put(index, x)
        else:
            ctx.save_for_backward(x)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.offloader is not None:
            x = ctx.offloader.take(ctx.index)
            ctx.offloader.prefetch(ctx.index - 1)
        else:
            (x,) = ctx.saved_tensors
        x = x.detach().requires_grad_(ctx.needs_input_grad[0])
        with torch.enable_grad():
            out = ctx.run(x, True)
        torch.autograd.backward(out, grad)
        return (x.grad, None, None, None, *([None] * (len(ctx.needs_input_grad) - 4)))


class Recompute:
    """Applies one checkpointing mode to every decoder layer of a forward pass."""

    def __init__(self, mode: str, device: torch.device) -> None:
        if mode not in MODES:
            raise ValueError(f"activation checkpointing mode {mode!r}; accepted: {', '.join(MODES)}")
        if mode == "offload" and device.type != "cuda":
            raise ValueError("activation offload needs a CUDA device")
        self.mode = mode
        self.offloader = ActivationOffloader(device) if mode == "offload" else None

    def __call__(
        self, index: int, last: bool, run: Callable[[torch.Tensor, bool], torch.Tensor], x: torch.Tensor,
        params: list[torch.Tensor],
    ) -> torch.Tensor:
        if self.mode == "none" or not torch.is_grad_enabled():
            return run(x, False)
        offloader = None if last else self.offloader
        return LayerCheckpoint.apply(x, run, offloader, index, *params)
