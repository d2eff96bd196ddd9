"""Decoder layers replayed as CUDA graphs: each layer's forward and backward is captured once for a micro-batch
shape, so a training micro-batch launches one graph per layer and direction instead of the hundreds of kernels
(and their Python) that the layer's fused Functions launch one by one. The engine is host-bound on fast GPUs
(issue 13: the GPU was busy 82 % of a Qwen2-1.5B step), and this is the host time it removes.

Only activation checkpointing `none` is graphed: the other modes recompute inside backward and offload through
host copies. One shape is kept (tokens, samples, longest sample): a micro-batch of another shape, and every
forward without gradients, runs the layers eagerly.
"""
from __future__ import annotations

import dataclasses

import torch

from train_core.fast.arch import ArchSpec
from train_core.fast.batch import PackedBatch
from train_core.fast.layer import DecoderLayer


class LayerModule(torch.nn.Module):
    """One decoder layer with its adapters as the module's parameters, over a batch of one fixed shape."""

    def __init__(self, layer: DecoderLayer, spec: ArchSpec, batch: PackedBatch, mlp_tile_rows: int | None) -> None:
        super().__init__()
        self.layer, self.spec, self.batch, self.mlp_tile_rows = layer, spec, batch, mlp_tile_rows
        self.adapters = torch.nn.ParameterList(layer.parameters())

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        batch = dataclasses.replace(self.batch, positions=positions, cu_seqlens=cu_seqlens)
        return self.layer.forward(x, batch, self.spec, self.mlp_tile_rows)


def shape_of(batch: PackedBatch) -> tuple[int, int, int]:
    return batch.tokens, batch.cu_seqlens.numel(), batch.max_length


class GraphedLayers:
    """The model's layers captured for the first micro-batch shape they are asked to run."""

    def __init__(self, layers: list[DecoderLayer], spec: ArchSpec, mlp_tile_rows: int | None) -> None:
        self.layers, self.spec, self.mlp_tile_rows = layers, spec, mlp_tile_rows
        self.shape: tuple[int, int, int] | None = None
        self.callables: tuple = ()
        self.positions = self.cu_seqlens = None
        self.addresses: list[int] = []
        self.hooks: list = []

    def matches(self, batch: PackedBatch) -> bool:
        """Whether this batch can replay the graphs; they are captured for the first shape asked, and again when
        the adapters have moved (the optimizer's flat buffer re-homes them)."""
        if self.shape is None or self.addresses != self._parameter_addresses():
            self.release()
            self.capture(batch)
        return self.shape == shape_of(batch)

    def run(self, x: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """The last layer's output; it lives in the graphs' memory until the next micro-batch's forward."""
        self.positions.copy_(batch.positions)
        self.cu_seqlens.copy_(batch.cu_seqlens)
        for layer in self.callables:
            x = layer(x, self.positions, self.cu_seqlens)
        return x

    def capture(self, batch: PackedBatch) -> None:
        device = batch.positions.device
        self.shape = shape_of(batch)
        self.positions, self.cu_seqlens = batch.positions.clone(), batch.cu_seqlens.clone()
        static = dataclasses.replace(batch, positions=self.positions, cu_seqlens=self.cu_seqlens)
        modules = tuple(LayerModule(layer, self.spec, static, self.mlp_tile_rows) for layer in self.layers)
        hidden = self.spec.hidden
        dtype = self.layers[0].input_norm.dtype
        sample_args = tuple(
            (torch.zeros(batch.tokens, hidden, dtype=dtype, device=device).requires_grad_(index > 0),
             self.positions, self.cu_seqlens)
            for index in range(len(modules))
        )
        self.callables = torch.cuda.make_graphed_callables(modules, sample_args, num_warmup_iters=3)
        self.addresses = self._parameter_addresses()
        for parameter in (p for layer in self.layers for p in layer.parameters()):
            # A graph's gradient output is overwritten at its next replay; autograd would keep it as .grad
            # (and add the next micro-batch's gradient to itself), so it gets a copy.
            self.hooks.append(parameter.register_hook(torch.Tensor.clone))

    def _parameter_addresses(self) -> list[int]:
        return [p.data_ptr() for layer in self.layers for p in layer.parameters()]

    def release(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks, self.callables, self.shape = [], (), None
