"""Which GPU a bare `cuda` means, and when the engines ask the allocator for expandable segments."""
from __future__ import annotations

import pytest
import torch

from train_core.cuda_setup import EXPANDABLE_SEGMENTS, allocator_setting, indexed_device, prefer_expandable_segments


def test_a_bare_cuda_device_is_the_current_gpu():
    assert indexed_device(torch.device("cuda"), 1) == torch.device("cuda", 1)
    assert indexed_device(torch.device("cuda", 0), 1) == torch.device("cuda", 0)
    assert indexed_device(torch.device("cpu"), 1) == torch.device("cpu")


@pytest.mark.parametrize("environ, expected", [
    ({}, EXPANDABLE_SEGMENTS),
    ({"PYTORCH_CUDA_ALLOC_CONF": ""}, EXPANDABLE_SEGMENTS),
    ({"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128"}, None),
    ({"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:False"}, None),
    ({"PYTORCH_ALLOC_CONF": "expandable_segments:False"}, None),
])
def test_expandable_segments_unless_the_user_configured_the_allocator(environ, expected):
    assert allocator_setting(environ) == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_a_process_without_a_gpu_keeps_its_environment():
    environ: dict[str, str] = {}
    assert prefer_expandable_segments(environ) is False
    assert environ == {}
