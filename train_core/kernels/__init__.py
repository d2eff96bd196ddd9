"""Triton kernels for the CUDA path, one per file, each beside its plain-PyTorch reference.

No module here imports triton when it is imported: a kernel is compiled on first use, so a CPU-only
install (CI) imports these files and runs the references.
"""
from __future__ import annotations

import functools
import importlib.util
import os

import torch


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def use_triton(tensor: torch.Tensor) -> bool:
    """Whether an op on `tensor` runs its Triton kernel; SPOTTUNE_KERNELS=reference|triton overrides the default
    (Triton on CUDA when installed; `triton` on CPU tensors needs TRITON_INTERPRET=1)."""
    mode = os.environ.get("SPOTTUNE_KERNELS", "auto")
    if mode == "reference":
        return False
    if mode == "triton":
        return True
    return tensor.is_cuda and triton_available()
