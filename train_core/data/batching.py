"""Optimizer-step batches over runspec.packing's epoch rows, and the micro-batch tensors built from them.

Order is a pure function of (seed, epoch), so a resumed run that knows (epoch, cursor) sees exactly the
batches it would have seen without stopping.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from runspec.packing import epoch_rows
from runspec.resolve import run_steps
from train_core.data.tokenize import TokenizedSample

IGNORE_INDEX = -100


@dataclass
class MicroBatch:
    """One forward/backward: samples laid end to end in a single row, positions restarting per sample."""

    input_ids: torch.Tensor  # (1, T)
    position_ids: torch.Tensor  # (1, T)
    labels: torch.Tensor  # (1, T): the token each position must predict, or IGNORE_INDEX
    num_targets: int


def collate(samples: list[TokenizedSample]) -> MicroBatch:
    """Flatten samples without padding; labels are already shifted and never cross a sample boundary."""
    ids: list[int] = []
    positions: list[int] = []
    labels: list[int] = []
    for sample in samples:
        ids.extend(sample.input_ids)
        positions.extend(range(len(sample)))
        shifted = [
            sample.input_ids[i + 1] if sample.trainable[i + 1] else IGNORE_INDEX for i in range(len(sample) - 1)
        ]
        labels.extend(shifted + [IGNORE_INDEX])
    return MicroBatch(
        input_ids=torch.tensor([ids], dtype=torch.long),
        position_ids=torch.tensor([positions], dtype=torch.long),
        labels=torch.tensor([labels], dtype=torch.long),
        num_targets=sum(label != IGNORE_INDEX for label in labels),
    )


class BatchPlan:
    """Global optimizer-step batches for every epoch, and each worker's micro-batches of a step."""

    def __init__(
        self, samples: list[TokenizedSample], seed: int, batch_size: int, max_seq_length: int, packing: bool
    ) -> None:
        self.samples = samples
        self.seed = seed
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self.packing = packing
        self._lengths = [len(sample) for sample in samples]

    @lru_cache(maxsize=4)
    def rows(self, epoch: int) -> list[list[int]]:
        """Sequences of this epoch, each a list of sample indices."""
        return epoch_rows(self._lengths, self.seed, epoch, self.max_seq_length, self.packing)

    def steps_in_epoch(self, epoch: int) -> int:
        return -(-len(self.rows(epoch)) // self.batch_size)

    def total_steps(self, epochs: int, max_steps: int | None) -> int:
        return run_steps([len(self.rows(epoch)) for epoch in range(epochs)], self.batch_size, max_steps)

    def step_rows(self, epoch: int, cursor: int) -> list[list[int]]:
        """The rows of optimizer step `cursor` (0-based) within `epoch`."""
        rows = self.rows(epoch)
        return rows[cursor * self.batch_size : (cursor + 1) * self.batch_size]

    def target_count(self, rows: list[list[int]]) -> int:
        """Tokens that carry loss in these rows (the loss normaliser for the whole optimizer step)."""
        return sum(sum(self.samples[index].trainable) for row in rows for index in row)

    def micro_batches(
        self, rows: list[list[int]], micro_batch_size: int, rank: int = 0, world_size: int = 1
    ) -> list[MicroBatch]:
        """This worker's share of a step's rows, split into micro-batches of micro_batch_size sequences."""
        share = rows[rank::world_size]
        return [
            collate([self.samples[index] for row in share[start : start + micro_batch_size] for index in row])
            for start in range(0, len(share), micro_batch_size)
        ]
