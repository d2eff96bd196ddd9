"""Host copies of flat tensors in fixed-size chunks of (pinned) memory, under a byte budget.

torch's pinned-memory allocator rounds every block up to a power of two, so one pinned buffer per
offloaded layer input pins up to twice its size: a 409,600-token Llama-3-8B input (3.125 GiB) takes
4 GiB, 124 GiB for the 31 offloaded layers. Chunks of a power-of-two size are pinned exactly, so a
tensor's copy wastes less than one chunk, and they are reused across steps and lengths. The budget
bounds what is pinned; a key that would pass it is refused, and its owner keeps the tensor elsewhere.
"""
from __future__ import annotations

import os

import torch

CHUNK_BYTES = 64 * 2**20
DEFAULT_HOST_FRACTION = 0.8  # of the host's available memory; the rest is left to the OS, loaders, the optimizer


def available_host_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else the physical memory."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_host_budget() -> int:
    return int(DEFAULT_HOST_FRACTION * available_host_bytes())


class HostStore:
    """Per-key chunk lists; a key's chunks grow to the largest tensor stored under it and are kept for reuse."""

    def __init__(self, budget_bytes: int, pin: bool, chunk_bytes: int = CHUNK_BYTES) -> None:
        if chunk_bytes < 8 or chunk_bytes & (chunk_bytes - 1):
            raise ValueError(f"chunk_bytes must be a power of two >= 8, got {chunk_bytes}")
        self.budget_bytes = budget_bytes
        self.pin = pin
        self.chunk_bytes = chunk_bytes
        self.chunks: dict[int, list[torch.Tensor]] = {}

    @property
    def held_bytes(self) -> int:
        return self.chunk_bytes * sum(len(chunks) for chunks in self.chunks.values())

    def reserve(self, key: int, nbytes: int) -> bool:
        """Grow `key`'s chunks to hold `nbytes`; False, allocating nothing, when that would pass the budget."""
        chunks = self.chunks.setdefault(key, [])
        missing = -(-nbytes // self.chunk_bytes) - len(chunks)
        if missing <= 0:
            return True
        if self.held_bytes + missing * self.chunk_bytes > self.budget_bytes:
            return False
        chunks.extend(torch.empty(self.chunk_bytes, dtype=torch.uint8, pin_memory=self.pin) for _ in range(missing))
        return True

    def pieces(self, key: int, flat: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(slice of `flat`, same-sized view of one of `key`'s chunks) pairs that cover `flat` in order."""
        per_chunk = self.chunk_bytes // flat.element_size()
        numel = flat.numel()
        return [
            (flat[start : start + per_chunk], chunk.view(flat.dtype)[: min(per_chunk, numel - start)])
            for start, chunk in zip(range(0, numel, per_chunk), self.chunks[key])
        ]
