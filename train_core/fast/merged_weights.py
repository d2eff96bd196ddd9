"""Merged weights kept from one optimizer step to the next.

The adapters change only at the optimizer step, yet each micro-batch dequantizes every projection group with its
adapter merged in for the forward and again for the backward (a third time when a checkpointed layer is
recomputed). Keeping each group's merged bf16 weight turns that into one dequantization pass per optimizer step,
for the bf16 size of every adapted model's linear weights on the GPU. The kept tensors never move, so CUDA graphs
captured over them read the refreshed values.

The weights go stale when the adapters change: the Trainer says so after each optimizer step
(`Engine.parameters_changed`), loading an adapter state marks them stale, and the next training forward refreshes
them. A forward outside training (eval) dequantizes as usual, so it never sees stale weights.

On a GPU the refresh runs eagerly once (which compiles its kernels) and is then replayed as one CUDA graph: it is
a dequantization and a merge per projection, about 1,000 launches for Qwen2-1.5B, and at the start of a step the
GPU has nothing else queued, so launched one by one they left it idle for about 10 ms (2026-11-30, H200).
"""
from __future__ import annotations

import torch

from train_core.fast.layer import DecoderLayer


class MergedWeights:
    """Every layer's groups, each with a kept merged weight that is refreshed once after the adapters change."""

    def __init__(self, layers: list[DecoderLayer]) -> None:
        self.groups = [(group, layer, name) for layer in layers for name, group in layer.groups.items()]
        self.tensors = [torch.empty(group.shape, dtype=group.dtype, device=group.bases[0].packed.device)
                        for group, _, _ in self.groups]
        self.stale = True
        self.refreshes = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.captured_for: list[int] = []  # the adapters' addresses the graph reads

    def mark_stale(self) -> None:
        self.stale = True

    def use(self) -> None:
        """The groups read their kept weights, refreshed first if the adapters changed since."""
        if self.stale:
            self.refresh()
            self.stale = False
            self.refreshes += 1
        for (group, _, _), tensor in zip(self.groups, self.tensors):
            group.kept = tensor

    def refresh(self) -> None:
        """Merge every group into its kept tensor: by the captured graph while the adapters stay where it read them,
        else eagerly, capturing the graph for the next refresh on a GPU."""
        addresses = [p.data_ptr() for _, layer, name in self.groups for p in layer.params(name)]
        if self.graph is not None and addresses == self.captured_for:
            self.graph.replay()
            return
        with torch.no_grad():
            self.merge_all()
            if self.tensors and self.tensors[0].is_cuda:
                self.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.graph):
                    self.merge_all()
                self.captured_for = addresses

    def merge_all(self) -> None:
        for (group, layer, name), tensor in zip(self.groups, self.tensors):
            group.merge_into(tensor, layer.params(name))

    def release(self) -> None:
        """The groups dequantize on every use again (eval; the kept tensors stay allocated)."""
        for group, _, _ in self.groups:
            group.kept = None

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)
