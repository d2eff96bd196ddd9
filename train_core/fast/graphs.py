"""Decoder layers replayed as CUDA graphs: each layer's forward and backward is captured once for a micro-batch
shape, so a training micro-batch launches one graph per layer and direction instead of the hundreds of kernels
(and their Python) that the layer's fused Functions launch one by one. The engine is host-bound on fast GPUs
(issue 13: the GPU was busy 82 % of a Qwen2-1.5B step), and this is the host time it removes.

Packed micro-batches differ in tokens and samples, so each is padded to one captured shape: `sequences` samples
(a power of two) over `tokens` rows (a micro-batch's capacity, micro-batch x max sequence length, plus one row
per sample, so that filler samples of 1 to `max_length` rows always fill what the real ones leave). The filler
rows never reach the loss, and a filler sample attends only to itself. A micro-batch with more samples than the
capture holds is captured again at the next power of two; one with more rows than the capacity, or with a sample
longer than `max_length`, runs eagerly. A first micro-batch of equal-length samples is captured as it is instead,
without fillers, so that attention runs batched (train_core/fast/attention.py); while the micro-batches keep that
shape they replay it, and the first that does not moves the layers to padded captures for good.

This module graphs activation checkpointing `none`; train_core/fast/checkpoint_graphs.py graphs `full` and
`offload` with the same padding. Layers are graphed only with varlen flash attention (per-sample attention is shaped
by the host's list of lengths, which a padded capture does not have), and only in training: a forward without
gradients runs the layers eagerly.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from train_core.fast.arch import ArchSpec
from train_core.fast.attention import equal_lengths, varlen_backend
from train_core.fast.batch import PackedBatch, to_device
from train_core.fast.layer import DecoderLayer


def graphs_unsupported(spec: ArchSpec, device: torch.device) -> str | None:
    """Why this model's layers cannot be captured on `device`, or None when they can."""
    if device.type != "cuda":
        return "CUDA graphs need a CUDA device"  # checked first: the attention probe below runs on the device
    varlen = varlen_backend(device)
    if varlen is None:
        return "CUDA graphs need torch's varlen flash attention, which this torch build lacks"
    if spec.attention_softcap is not None:
        return "CUDA graphs need flash attention, which has no soft-capped scores (Gemma 2)"
    if spec.sliding_window is not None and not varlen.windows:
        return "CUDA graphs need flash attention with sliding windows, which this torch build lacks"
    return None


@dataclasses.dataclass(frozen=True)
class GraphShape:
    """What a capture is specialised to: rows, samples (real and filler) and the longest sample."""

    tokens: int
    sequences: int
    max_length: int
    equal: bool = False  # `sequences` samples of `max_length` rows each and no fillers


class LayerModule(torch.nn.Module):
    """One decoder layer with its adapters as the module's parameters, over a batch of one fixed shape."""

    def __init__(self, layer: DecoderLayer, spec: ArchSpec, batch: PackedBatch, mlp_tile_rows: int | None) -> None:
        super().__init__()
        self.layer, self.spec, self.batch, self.mlp_tile_rows = layer, spec, batch, mlp_tile_rows
        self.adapters = torch.nn.ParameterList(layer.parameters())

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        batch = dataclasses.replace(self.batch, positions=positions, cu_seqlens=cu_seqlens)
        return self.layer.forward(x, batch, self.spec, self.mlp_tile_rows)


class GraphedLayers:
    """The model's layers captured for one padded micro-batch shape.

    `max_tokens` and `max_length` bound a micro-batch that replays (the Trainer passes micro-batch x max sequence
    length and the max sequence length); left out, the first micro-batch's own sizes are taken.
    """

    def __init__(
        self, layers: list[DecoderLayer], spec: ArchSpec, mlp_tile_rows: int | None, max_tokens: int | None = None,
        max_length: int | None = None,
    ) -> None:
        self.layers, self.spec, self.mlp_tile_rows = layers, spec, mlp_tile_rows
        self.max_tokens, self.max_length = max_tokens, max_length
        self.shape: GraphShape | None = None
        self.positions = self.cu_seqlens = torch.zeros(0)  # the graphs' static inputs, set by capture
        self.callables: tuple = ()
        self.addresses: list[int] = []
        self.hooks: list = []
        self.replayed = self.eager = self.captures = 0
        self.padded_only = False  # set once a micro-batch did not fit a capture of equal-length samples

    def run(self, x: torch.Tensor, batch: PackedBatch) -> torch.Tensor | None:
        """The last layer's output for `batch` (the input embeddings `x`), or None when it must run eagerly."""
        self.max_tokens = self.max_tokens or batch.tokens
        self.max_length = self.max_length or batch.max_length
        if batch.tokens > self.max_tokens or batch.max_length > self.max_length or self.max_length < 2:
            self.eager += 1
            return None
        shape = self._equal_shape(batch) or self._padded_shape(batch)
        if shape != self.shape or self.addresses != self._parameter_addresses():
            self.release()
            self.capture(shape, x, batch)
            if self.shape is None:  # the capture declined (train_core/fast/checkpoint_graphs.py)
                self.eager += 1
                return None
        positions, cu_seqlens = self._padded_boundaries(batch)
        self.positions.copy_(positions)
        self.cu_seqlens.copy_(cu_seqlens)
        self.replayed += 1
        return self.replay(x)

    def replay(self, x: torch.Tensor) -> torch.Tensor:
        """The last layer's output for `x` by the captured graphs (the static boundaries already hold the batch's)."""
        hidden = F.pad(x, (0, 0, 0, self.shape.tokens - x.shape[0]))
        for layer in self.callables:
            hidden = layer(hidden, self.positions, self.cu_seqlens)
        return hidden[: x.shape[0]]

    def _equal_shape(self, batch: PackedBatch) -> GraphShape | None:
        """The micro-batch's own shape when its samples have one length and it may replay (or make) the capture."""
        shape = GraphShape(batch.tokens, len(batch.lengths), batch.max_length, equal=True)
        if not self.padded_only and equal_lengths(batch.lengths) and self.shape in (None, shape):
            return shape
        self.padded_only = True
        return None

    def _padded_shape(self, batch: PackedBatch) -> GraphShape:
        """The capture's shape padded with filler samples: the fewest (a power of two) that hold what `batch` leaves."""
        sequences = self.shape.sequences if self.shape and not self.shape.equal else 1
        while not self._fits(batch, sequences):
            sequences *= 2
        return GraphShape(self.max_tokens + sequences, sequences, self.max_length)

    def _fits(self, batch: PackedBatch, sequences: int) -> bool:
        """Whether the rows left after `batch` split into the samples left, each of 1 to max_length rows."""
        fillers = sequences - len(batch.lengths)
        return fillers >= 1 and self.max_tokens + sequences - batch.tokens <= fillers * self.max_length

    def _padded_boundaries(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(positions, sample boundaries) on the device: the batch's samples, then filler samples of near-equal
        lengths over the remaining rows. No sample is empty: flash attention's backward is not trusted with empty
        samples, and there are always at least as many remaining rows as filler samples."""
        if self.shape.equal:
            return batch.positions, batch.cu_seqlens
        pad, fillers = self.shape.tokens - batch.tokens, self.shape.sequences - len(batch.lengths)
        longer = pad % fillers
        lengths = [pad // fillers + 1] * longer + [pad // fillers] * (fillers - longer)
        boundaries = torch.tensor([0, *batch.lengths, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)
        filler_positions = torch.cat([torch.arange(length, dtype=torch.int32) for length in lengths])
        device = batch.positions.device
        return torch.cat([batch.positions, to_device(filler_positions, device)]), to_device(boundaries, device)

    def static_batch(self, shape: GraphShape, batch: PackedBatch, device: torch.device) -> PackedBatch:
        """The batch the graphs are captured over: `shape`, with the static boundaries (set from `batch`'s)."""
        self.shape = shape
        self.positions, self.cu_seqlens = (boundary.clone() for boundary in self._padded_boundaries(batch))
        return PackedBatch(
            input_ids=torch.zeros(shape.tokens, dtype=torch.long, device=device), positions=self.positions,
            cu_seqlens=self.cu_seqlens, max_length=shape.max_length,
            lengths=[shape.max_length] * shape.sequences if shape.equal else [],
            target_rows=torch.zeros(0, dtype=torch.long, device=device),
            targets=torch.zeros(0, dtype=torch.long, device=device),
        )

    def capture(self, shape: GraphShape, x: torch.Tensor, batch: PackedBatch) -> None:
        """Capture every layer for `shape`, warming up on `batch`'s boundaries."""
        device = x.device
        static = self.static_batch(shape, batch, device)
        modules = tuple(LayerModule(layer, self.spec, static, self.mlp_tile_rows) for layer in self.layers)
        sample_args = tuple(
            (torch.zeros(shape.tokens, x.shape[1], dtype=x.dtype, device=device).requires_grad_(index > 0),
             self.positions, self.cu_seqlens)
            for index in range(len(modules))
        )
        self.callables = torch.cuda.make_graphed_callables(modules, sample_args, num_warmup_iters=3)
        self.addresses = self._parameter_addresses()
        self.captures += 1
        for parameter in self.parameters():
            # A graph's gradient output is overwritten at its next replay; autograd would keep it as .grad
            # (and add the next micro-batch's gradient to itself), so it gets a copy.
            self.hooks.append(parameter.register_hook(torch.Tensor.clone))

    def describe(self) -> str:
        shape = "nothing captured"
        if self.shape is not None:
            samples = f"{self.shape.sequences} samples of {self.shape.max_length}" if self.shape.equal else \
                f"{self.shape.sequences} samples, longest {self.shape.max_length}"
            shape = f"{self.shape.tokens} rows, {samples}"
        return (f"CUDA graphs: {self.replayed} micro-batches replayed, {self.eager} eager, {self.captures} captures "
                f"({shape})")

    def parameters(self) -> list[torch.Tensor]:
        """Every layer's adapters, in the model's order."""
        return [p for layer in self.layers for p in layer.parameters()]

    def _parameter_addresses(self) -> list[int]:
        return [p.data_ptr() for p in self.parameters()]

    def release(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.hooks, self.callables, self.shape = [], (), None
