"""The adapters in one flat buffer: the same training as per-tensor AdamW and clipping, one optimizer state."""
from __future__ import annotations

import pytest
import torch

from train_core.flat_params import ALIGN, FlatParameters


def adapters(seed: int) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [(4, 24), (24, 4), (4, 300), (300, 4), (4, 64)]  # 96 and 1,200 elements: neither ends on the alignment
    return [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in shapes]


def loss_of(parameters: list[torch.Tensor], step: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(100 + step)
    return sum((p * torch.randn(p.shape, generator=generator)).sum() + p.pow(2).sum() for p in parameters)


def train(flat: bool, steps: int = 5, accumulate: int = 2) -> tuple[list[torch.Tensor], list[float]]:
    parameters = adapters(0)
    holder = FlatParameters(parameters) if flat else None
    optimizer = torch.optim.AdamW([holder.parameter] if flat else parameters, lr=0.05, weight_decay=0.1, foreach=False)
    norms = []
    for step in range(steps):
        for micro in range(accumulate):
            loss_of(parameters, step * accumulate + micro).backward()
        if flat:
            holder.gather_grads()
        clipped = [holder.parameter] if flat else parameters
        norms.append(float(torch.nn.utils.clip_grad_norm_(clipped, 1.0)))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return [p.detach().clone() for p in parameters], norms


def test_training_through_the_flat_buffer_matches_per_tensor_adamw_and_clipping():
    separate, separate_norms = train(flat=False)
    flat, flat_norms = train(flat=True)
    for expected, got in zip(separate, flat):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert flat_norms == pytest.approx(separate_norms, rel=1e-6)


def test_the_tensors_become_aligned_views_of_one_buffer_and_the_padding_stays_zero():
    parameters = adapters(1)
    before = [p.detach().clone() for p in parameters]
    holder = FlatParameters(parameters)
    assert [p.data_ptr() for p in parameters] == [holder.parameter.data_ptr() + 4 * o for o in holder.offsets]
    assert all(offset % ALIGN == 0 for offset in holder.offsets)
    assert all(torch.equal(p, b) for p, b in zip(parameters, before))
    optimizer = torch.optim.AdamW([holder.parameter], lr=0.1, weight_decay=0.1)
    for step in range(3):
        loss_of(parameters, step).backward()
        grad = holder.gather_grads()
        assert all(p.grad is None for p in parameters)
        optimizer.step()
    used = torch.zeros(holder.parameter.numel(), dtype=torch.bool)
    for p, offset in zip(parameters, holder.offsets):
        used[offset : offset + p.numel()] = True
    assert not holder.parameter.detach()[~used].any() and not grad[~used].any()


def test_parameters_of_mixed_dtypes_are_refused_in_one_line():
    with pytest.raises(ValueError, match="differ in dtype or device"):
        FlatParameters([torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))])
