"""Activation checkpointing per decoder layer: none, full (recompute), or offload (recompute, and keep the
layer inputs in pinned host memory, copied on a side stream while the GPU computes). Offload pins at most
a host budget; the layer inputs that would pass it stay on the GPU, as in `full`."""
from __future__ import annotations

from typing import Callable

import torch

from train_core.fast.host_store import HostStore, default_host_budget

MODES = ("none", "full", "offload")


class ActivationOffloader:
    """Host copies of layer inputs: device-to-host in forward, prefetched host-to-device one layer ahead
    in backward, both on a side stream so they overlap the layers' compute. `kept` holds the layers whose
    input the store refused in the last forward (their caller keeps them on the GPU)."""

    def __init__(self, device: torch.device, store: HostStore) -> None:
        self.stream = torch.cuda.Stream(device)
        self.store = store
        self.kept: set[int] = set()
        self.meta: dict[int, tuple[torch.Size, torch.dtype]] = {}
        self.ready: dict[int, tuple[torch.Tensor, torch.cuda.Event]] = {}

    def put(self, index: int, x: torch.Tensor) -> bool:
        """Start copying x to the host; False when the host budget has no room for it."""
        if not self.store.reserve(index, x.nbytes):
            self.kept.add(index)
            return False
        self.kept.discard(index)
        self.copy_out(index, x)
        x.record_stream(self.stream)
        self.meta[index] = (x.shape, x.dtype)
        return True

    def copy_out(self, index: int, x: torch.Tensor) -> torch.cuda.Event:
        """Copy x into layer `index`'s reserved host chunks on the side stream, after the compute stream's work so far;
        the event marks the copy done."""
        return self._copy(index, x, to_host=True)

    def copy_in(self, index: int, x: torch.Tensor) -> torch.cuda.Event:
        """Fill x from layer `index`'s host chunks on the side stream, after the compute stream's work so far (x's
        earlier readers); the event marks it filled."""
        return self._copy(index, x, to_host=False)

    def _copy(self, index: int, x: torch.Tensor, to_host: bool) -> torch.cuda.Event:
        self.stream.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(self.stream):
            for device_piece, host_piece in self.store.pieces(index, x.view(-1)):
                (host_piece.copy_(device_piece, non_blocking=True) if to_host
                 else device_piece.copy_(host_piece, non_blocking=True))
            event = torch.cuda.Event()
            event.record(self.stream)
        return event

    def prefetch(self, index: int) -> None:
        if index in self.ready or index not in self.meta:
            return
        shape, dtype = self.meta[index]
        # Allocated from the compute stream's pool, which reuses it once the layer is done; a block taken from the
        # side stream's own pool would stay there, reserved but idle (0.23-0.39 GiB on 8 layers of Llama-3-8B).
        x = torch.empty(shape, dtype=dtype, device=self.stream.device)
        event = self.copy_in(index, x)
        x.record_stream(self.stream)
        self.ready[index] = (x, event)

    def take(self, index: int) -> torch.Tensor:
        self.prefetch(index)
        x, event = self.ready.pop(index)
        torch.cuda.current_stream(x.device).wait_event(event)
        del self.meta[index]
        return x


class LayerCheckpoint(torch.autograd.Function):
    """Runs `run(x, False)` without keeping its activations; backward restores x, recomputes with
    `run(x, True)` (which may skip computing the output's values) and backpropagates. The layer's adapter
    parameters are inputs so that the output requires grad even when x does not."""

    @staticmethod
    def forward(ctx, x, run: Callable[[torch.Tensor, bool], torch.Tensor], offloader: ActivationOffloader | None, index: int, *params):
        with torch.no_grad():
            out = run(x, False)
        if offloader is not None and not offloader.put(index, x):
            offloader = None
        if offloader is None:
            ctx.save_for_backward(x)
        ctx.run, ctx.offloader, ctx.index = run, offloader, index
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

    def __init__(self, mode: str, device: torch.device, host_budget_bytes: int | None = None) -> None:
        """`host_budget_bytes` bounds the pinned memory of `offload` (default: part of the host's available memory)."""
        if mode not in MODES:
            raise ValueError(f"activation checkpointing mode {mode!r}; accepted: {', '.join(MODES)}")
        if mode == "offload" and device.type != "cuda":
            raise ValueError("activation offload needs a CUDA device")
        self.mode = mode
        self.offloader = None
        if mode == "offload":
            budget = default_host_budget() if host_budget_bytes is None else host_budget_bytes
            self.offloader = ActivationOffloader(device, HostStore(budget, pin=True))

    def __call__(
        self, index: int, last: bool, run: Callable[[torch.Tensor, bool], torch.Tensor], x: torch.Tensor,
        params: list[torch.Tensor],
    ) -> torch.Tensor:
        if self.mode == "none" or not torch.is_grad_enabled():
            return run(x, False)
        offloader = None if last else self.offloader
        return LayerCheckpoint.apply(x, run, offloader, index, *params)
