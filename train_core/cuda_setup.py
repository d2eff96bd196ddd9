"""CUDA process setup the engines share: which GPU a bare `cuda` means, and how the caching allocator grows.

Expandable segments let the allocator grow one mapping instead of keeping many fixed-size blocks, so the
memory a run reserves stays close to what it allocates; reserved is what runs out first on a small card.
"""
from __future__ import annotations

import os
from typing import Mapping, MutableMapping

import torch

ALLOCATOR_VARIABLES = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")  # the second is torch >= 2.9's name
EXPANDABLE_SEGMENTS = "expandable_segments:True"


def indexed_device(device: torch.device, current_index: int) -> torch.device:
    """`device` with its index filled in: a bare `cuda` is the GPU `current_index` (torch.cuda.current_device())."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", current_index)
    return device


def current_cuda_device(device: torch.device) -> torch.device:
    """A bare `cuda` resolved to the current GPU, so that every tensor of a run lands on the same one
    (safetensors reads a bare `cuda` as GPU 0 whatever torch.cuda.set_device chose)."""
    if device.type == "cuda" and device.index is None:
        return indexed_device(device, torch.cuda.current_device())
    return device


def allocator_setting(environ: Mapping[str, str]) -> str | None:
    """The allocator setting to ask for: expandable segments, unless the user already configured the allocator."""
    if any(environ.get(name) for name in ALLOCATOR_VARIABLES):
        return None
    return EXPANDABLE_SEGMENTS


def prefer_expandable_segments(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Turn on expandable segments for this process and the workers it starts, unless the user set the allocator
    or there is no GPU. Applies to segments reserved from now on, so call it before the model is loaded."""
    setting = allocator_setting(environ)
    if setting is None or not torch.cuda.is_available():
        return False
    environ[ALLOCATOR_VARIABLES[0]] = setting
    set_settings = getattr(torch._C, "_accelerator_setAllocatorSettings", None)
    if set_settings is None:
        set_settings = torch._C._cuda_cudaCachingAllocator_set_allocator_settings
    set_settings(setting)
    return True
