"""How CUDA-graphed layers pad a packed micro-batch to the captured shape (host side; the replay is a CUDA test)."""
from __future__ import annotations

import random

import torch

from train_core.fast.batch import PackedBatch
from train_core.fast.graphs import GraphedLayers, GraphShape

CPU = torch.device("cpu")


def padded(lengths: list[int], max_tokens: int, max_length: int, sequences: int = 1) -> tuple[GraphedLayers, PackedBatch]:
    """Graphed layers (none to capture) sized for `lengths` as run() sizes them, and the batch."""
    graphs = GraphedLayers([], None, None, max_tokens, max_length)
    positions = torch.cat([torch.arange(length) for length in lengths])[None]
    batch = PackedBatch.build(torch.zeros_like(positions), positions, None, CPU)
    while not graphs._fits(batch, sequences):
        sequences *= 2
    graphs.shape = GraphShape(max_tokens + sequences, sequences, max_length)
    return graphs, batch


def test_filler_samples_fill_the_captured_rows_without_empty_or_overlong_samples():
    generator = random.Random(4)
    for _ in range(300):
        max_length = generator.choice([2, 3, 16, 128, 2048])
        max_tokens = max_length * generator.randint(1, 4)
        lengths, left = [], max_tokens
        while left and generator.random() < 0.9:
            lengths.append(generator.randint(1, min(left, max_length)))
            left -= lengths[-1]
        if not lengths:
            continue
        graphs, batch = padded(lengths, max_tokens, max_length, sequences=generator.choice([1, 4]))
        positions, cu_seqlens = graphs._padded_boundaries(batch)
        sizes = torch.diff(cu_seqlens).tolist()
        assert cu_seqlens.numel() == graphs.shape.sequences + 1 and int(cu_seqlens[-1]) == graphs.shape.tokens
        assert sizes[: len(lengths)] == lengths and all(1 <= size <= max_length for size in sizes)
        assert positions.numel() == graphs.shape.tokens
        assert torch.equal(positions, torch.cat([torch.arange(size, dtype=torch.int32) for size in sizes]))
        assert graphs.shape.sequences & (graphs.shape.sequences - 1) == 0


def test_a_full_micro_batch_of_whole_rows_takes_one_row_per_sample_more():
    graphs, batch = padded([2048, 2048], 4096, 2048)
    assert graphs.shape == GraphShape(4100, 4, 2048)
    _, cu_seqlens = graphs._padded_boundaries(batch)
    assert cu_seqlens.tolist() == [0, 2048, 4096, 4098, 4100]


def batch_of(lengths: list[int]) -> PackedBatch:
    positions = torch.cat([torch.arange(length) for length in lengths])[None]
    return PackedBatch.build(torch.zeros_like(positions), positions, None, CPU)


def test_equal_length_samples_are_captured_as_they_are_until_a_micro_batch_differs():
    graphs = GraphedLayers([], None, None, 4096, 2048)
    whole_rows = batch_of([2048, 2048])
    graphs.shape = graphs._equal_shape(whole_rows)
    assert graphs.shape == GraphShape(4096, 2, 2048, equal=True)
    positions, cu_seqlens = graphs._padded_boundaries(whole_rows)
    assert positions is whole_rows.positions and cu_seqlens.tolist() == [0, 2048, 4096]
    assert graphs._equal_shape(whole_rows) == graphs.shape
    half_rows = batch_of([1024, 1024])
    assert graphs._equal_shape(half_rows) is None and graphs.padded_only
    assert graphs._padded_shape(half_rows) == GraphShape(4100, 4, 2048)
    assert graphs._equal_shape(whole_rows) is None  # padded for good


def test_a_first_micro_batch_of_mixed_lengths_rules_out_equal_captures():
    graphs = GraphedLayers([], None, None, 4096, 2048)
    assert graphs._equal_shape(batch_of([2000, 48])) is None
    assert graphs._equal_shape(batch_of([2048, 2048])) is None
