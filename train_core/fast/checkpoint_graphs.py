"""Checkpointed decoder layers (activation checkpointing full or offload) replayed as CUDA graphs.

Eagerly, a checkpointed layer launches its kernels three times a micro-batch (forward, recompute, backward) one by
one from Python, and the lean runs were bound by the host: the GPU was busy 39-51 % of a Qwen2-1.5B 4x2 offload step
on an H200, whose speed moved by 40 % from one host to the next (2026-11-30). Here every layer has two graphs per
micro-batch shape: its forward without grad, and its recompute with its backward. They read and write static
buffers allocated outside them, and whatever a graph allocates dies inside it, so all of them share one memory pool
about the size of one layer's backward.

- full: each layer's input stays on the GPU in a buffer of its own, as it does eagerly.
- offload: the layer inputs pass through a ring of three buffers and are copied to pinned host memory on a side
  stream while the next layers run; backward copies each back one layer ahead into one of two buffers. The last
  layer's input stays on the GPU, as it does eagerly. When the host budget cannot hold every input, the layers run
  eagerly (which keeps the inputs that do not fit on the GPU).

How micro-batches are padded to the captured shape is GraphedLayers' (train_core/fast/graphs.py).
"""
from __future__ import annotations

import dataclasses

import torch

from train_core.fast.arch import ArchSpec
from train_core.fast.batch import PackedBatch
from train_core.fast.graphs import GraphedLayers, GraphShape
from train_core.fast.layer import DecoderLayer
from train_core.fast.recompute import ActivationOffloader

RING = 3  # offload: layer i's input is overwritten by layer i + 2's output, so its copy to the host has a layer's time
WARMUP_PASSES = 2


class CheckpointedGraphs(GraphedLayers):
    """The layers' forward and recompute-and-backward graphs for one padded micro-batch shape; `offloader` (None for
    full checkpointing) is the eager path's, whose pinned host chunks and side stream these share."""

    def __init__(
        self, layers: list[DecoderLayer], spec: ArchSpec, mlp_tile_rows: int | None,
        offloader: ActivationOffloader | None, max_tokens: int | None = None, max_length: int | None = None,
    ) -> None:
        super().__init__(layers, spec, mlp_tile_rows, max_tokens, max_length)
        self.offloader = offloader
        self.forwards: list[torch.cuda.CUDAGraph] = []
        self.backwards: list[torch.cuda.CUDAGraph] = []
        self.inputs: list[torch.Tensor] = []  # full: layer i's input, the last one the output; offload: the ring
        self.restored: list[torch.Tensor] = []  # offload: two inputs copied back for backward
        self.grads: list[torch.Tensor] = []  # two gradients w.r.t. a layer's output, the next layer's input
        self.parameter_grads: list[list[torch.Tensor]] = []
        self.copied: dict[int, torch.cuda.Event] = {}
        self.ready: dict[int, torch.cuda.Event] = {}
        self.static: PackedBatch | None = None
        self.refused = False  # the host budget could not hold the offloaded inputs: eager from then on

    def run(self, x: torch.Tensor, batch: PackedBatch) -> torch.Tensor | None:
        if self.refused:
            self.eager += 1
            return None
        return super().run(x, batch)

    def input_buffer(self, index: int) -> torch.Tensor:
        """Where layer `index` reads its input in forward (and layer index - 1 writes its output)."""
        return self.inputs[index % RING] if self.offloader is not None else self.inputs[index]

    def saved_input(self, index: int) -> torch.Tensor:
        """Where layer `index`'s backward reads its input."""
        if self.offloader is None or index == len(self.layers) - 1:
            return self.input_buffer(index)
        return self.restored[index % 2]

    def capture(self, shape: GraphShape, x: torch.Tensor, batch: PackedBatch) -> None:
        device = x.device
        self.static = self.static_batch(shape, batch, device)
        count = len(self.layers)
        rows = (shape.tokens, x.shape[1])
        if self.offloader is not None:
            nbytes = shape.tokens * x.shape[1] * x.element_size()
            if not all(self.offloader.store.reserve(index, nbytes) for index in range(count - 1)):
                self.refused = True
                self.release()
                return
        buffers = RING if self.offloader is not None else count + 1
        self.inputs = [torch.zeros(rows, dtype=x.dtype, device=device) for _ in range(buffers)]
        self.restored = [torch.zeros(rows, dtype=x.dtype, device=device) for _ in range(2 if self.offloader else 0)]
        self.grads = [torch.zeros(rows, dtype=x.dtype, device=device) for _ in range(2)]
        self.parameter_grads = [[torch.zeros_like(p) for p in layer.parameters()] for layer in self.layers]
        self.input_buffer(0)[: x.shape[0]].copy_(x)
        # Compiles and tunes every kernel before the capture. On the compute stream, not on a side stream as
        # make_graphed_callables does: a side stream's cached blocks would stay reserved beside the graphs' pool
        # (0.18 GiB of a lean run's 2.46 on Qwen2-1.5B 4x2, H200).
        for _ in range(WARMUP_PASSES):
            for index in range(count):
                self.forward_layer(index)
            for index in reversed(range(count)):
                self.backward_layer(index)
        pool = torch.cuda.graph_pool_handle()
        self.forwards = [self._captured(lambda index=index: self.forward_layer(index), pool) for index in range(count)]
        self.backwards = [None] * count
        for index in reversed(range(count)):
            self.backwards[index] = self._captured(lambda index=index: self.backward_layer(index), pool)
        self.addresses = self._parameter_addresses()
        self.captures += 1

    @staticmethod
    def _captured(body, pool) -> torch.cuda.CUDAGraph:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            body()
        return graph

    def forward_layer(self, index: int) -> None:
        layer = self.layers[index]
        with torch.no_grad():
            out = layer.forward(self.input_buffer(index), self.static, self.spec, self.mlp_tile_rows)
            self.input_buffer(index + 1).copy_(out)

    def backward_layer(self, index: int) -> None:
        """Recompute layer `index` and backpropagate. Its gradients are taken w.r.t. aliases of the adapters (the same
        memory, new leaves): the adapters' own gradient accumulators may be alive in an earlier micro-batch's autograd
        graph, bound to the stream it ran on, which a capture must not wait for."""
        aliases = {name: (a.detach().requires_grad_(), b.detach().requires_grad_())
                   for name, (a, b) in self.layers[index].adapters.items()}
        layer = dataclasses.replace(self.layers[index], adapters=aliases)
        parameters = layer.parameters()
        with torch.enable_grad():
            x = self.saved_input(index).detach().requires_grad_(index > 0)
            out = layer.forward(x, self.static, self.spec, self.mlp_tile_rows, recomputing=True)
            grads = torch.autograd.grad(out, ([x] if index > 0 else []) + parameters, self.grads[(index + 1) % 2])
        if index > 0:
            self.grads[index % 2].copy_(grads[0])
        torch._foreach_copy_(self.parameter_grads[index], list(grads[1 if index > 0 else 0 :]))

    def replay(self, x: torch.Tensor) -> torch.Tensor:
        return ReplayedLayers.apply(x, self, *self.parameters())

    def replay_forward(self, x: torch.Tensor) -> torch.Tensor:
        count, tokens = len(self.layers), x.shape[0]
        first = self.input_buffer(0)
        first[:tokens].copy_(x)
        first[tokens:].zero_()
        compute = torch.cuda.current_stream(x.device)
        for index in range(count):
            if self.offloader is not None:
                if index >= 2 and index - 2 in self.copied:
                    compute.wait_event(self.copied.pop(index - 2))  # this layer's output overwrites that input
                if index < count - 1:
                    self.copied[index] = self.offloader.copy_out(index, self.input_buffer(index))
            self.forwards[index].replay()
        return self.input_buffer(count)[:tokens]

    def replay_backward(self, grad: torch.Tensor) -> list[torch.Tensor]:
        count, tokens = len(self.layers), grad.shape[0]
        last = self.grads[count % 2]
        last[:tokens].copy_(grad)
        last[tokens:].zero_()
        compute = torch.cuda.current_stream(grad.device)
        if self.offloader is not None and count > 1:
            self.copied.clear()
            self._restore(count - 2)
        for index in reversed(range(count)):
            if self.offloader is not None and index < count - 1:
                compute.wait_event(self.ready.pop(index))
                if index > 0:
                    self._restore(index - 1)  # after the layer that read its buffer last
            self.backwards[index].replay()
        return [grad.clone() for grads in self.parameter_grads for grad in grads]

    def _restore(self, index: int) -> None:
        """Start copying layer `index`'s offloaded input back into its restore buffer."""
        self.ready[index] = self.offloader.copy_in(index, self.restored[index % 2])

    def describe(self) -> str:
        refused = "; the host budget cannot hold the offloaded inputs, so the layers run eagerly" if self.refused else ""
        return super().describe() + refused

    def release(self) -> None:
        super().release()
        self.forwards, self.backwards, self.inputs, self.restored, self.grads = [], [], [], [], []
        self.parameter_grads, self.static = [], None
        self.copied.clear()
        self.ready.clear()


class ReplayedLayers(torch.autograd.Function):
    """The layer stack as one autograd node: forward replays the forward graphs, backward the backward ones and hands
    autograd a copy of every adapter gradient (the static ones are overwritten at the next replay)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, graphs: CheckpointedGraphs, *parameters: torch.Tensor) -> torch.Tensor:
        ctx.graphs = graphs
        return graphs.replay_forward(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return (None, None, *ctx.graphs.replay_backward(grad.contiguous()))
