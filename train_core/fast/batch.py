"""One packed micro-batch as the fast model consumes it: flat tokens, sample boundaries and loss targets."""
from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on the device without waiting for the GPU: CUDA copies from pageable memory first synchronise
    the stream, so the tensor goes through (cached) pinned memory."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # (N,) on the device
    positions: torch.Tensor  # (N,) int32: position within its sample
    cu_seqlens: torch.Tensor  # (samples + 1,) int32: sample boundaries
    max_length: int
    lengths: list[int]  # empty in a captured batch, whose boundaries change between replays (read cu_seqlens)
    target_rows: torch.Tensor  # (M,) rows whose label is not ignored
    targets: torch.Tensor  # (M,) their labels
    host_input_ids: torch.Tensor | None = None  # (N,) on the CPU, for an embedding kept in host memory

    @property
    def tokens(self) -> int:
        return self.input_ids.numel()

    @classmethod
    def build(
        cls, input_ids: torch.Tensor, position_ids: torch.Tensor | None, labels: torch.Tensor | None, device: torch.device
    ) -> "PackedBatch":
        """From (B, T) or (1, N) tensors; a sample starts wherever the position is 0 (and at every row start)."""
        rows, width = input_ids.shape[0], input_ids.shape[-1]
        if position_ids is None:
            position_ids = torch.arange(width).expand(rows, width)
        starts_mask = position_ids.reshape(rows, width).cpu() == 0
        starts_mask[:, 0] = True
        starts = starts_mask.reshape(-1).nonzero().squeeze(1)
        total = rows * width
        lengths = torch.diff(torch.cat([starts, torch.tensor([total])])).tolist()
        cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
        flat_labels = labels.reshape(-1).cpu() if labels is not None else torch.full((total,), IGNORE_INDEX)
        target_rows = (flat_labels != IGNORE_INDEX).nonzero().squeeze(1)
        return cls(
            input_ids=to_device(input_ids.reshape(-1), device),
            positions=to_device(position_ids.reshape(-1).to(dtype=torch.int32), device),
            cu_seqlens=to_device(cu_seqlens, device),
            max_length=max(lengths),
            lengths=lengths,
            target_rows=to_device(target_rows, device),
            targets=to_device(flat_labels[target_rows], device),
            host_input_ids=input_ids.reshape(-1).cpu(),
        )
