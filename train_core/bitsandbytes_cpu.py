"""Which bitsandbytes CPU code path 4-bit layers take, chosen by train_core rather than by the CPU's features.

bitsandbytes 0.50 on CPU picks code by what the CPU supports. On a CPU with AVX512-BF16, `Linear4bit.forward` in
eval mode without grad repacks `weight.data` in place into a CPU-specific layout (and asserts that the output
dimension is a multiple of 32); training afterwards runs on the repacked weights. On a CPU with AVX512 its native
NF4 dequantize also returns wrong values when a weight row is not a whole number of 64-value blocks.
train_core therefore always chooses the generic path: layers never repack, and NF4 weights are dequantized by
plain PyTorch (dequantize_4bit_portable), so results do not depend on the CPU and any shape works.
"""
from __future__ import annotations

import math
import warnings
from functools import lru_cache

import torch

GENERIC = "generic"
PACKED = "packed-avx512bf16"
DESCRIPTIONS = {
    GENERIC: "bitsandbytes CPU path generic (portable PyTorch NF4 dequantize, then matmul; AVX512 kernels off)",
    PACKED: "bitsandbytes CPU path packed-avx512bf16 (repacks weights in place at the first eval forward)",
}


def dequantize_4bit_portable(
    A: torch.Tensor, absmax: torch.Tensor, blocksize: int, quant_type: str, shape: list[int], dtype: torch.dtype
) -> torch.Tensor:
    """bitsandbytes' 4-bit layout (two codes a byte, high nibble first; one fp32 absmax per block) in plain PyTorch."""
    from bitsandbytes.functional import get_4bit_type

    packed = (A if A.dtype == torch.uint8 else A.view(torch.uint8)).reshape(-1)
    count = math.prod(shape)
    codes = torch.stack((packed >> 4, packed & 0xF), dim=1).reshape(-1)[:count].long()
    scales = absmax.float().repeat_interleave(blocksize)[:count]
    return (get_4bit_type(quant_type, device=packed.device)[codes] * scales).reshape(shape).to(dtype)


@lru_cache(maxsize=1)
def use_portable_cpu_dequantize() -> None:
    """Route bitsandbytes' 4-bit dequantize on CPU to dequantize_4bit_portable (once per process)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="(?s).*Overriding a previously registered kernel", category=UserWarning)
        torch.library.register_kernel("bitsandbytes::dequantize_4bit", "cpu", dequantize_4bit_portable)


def choose_bitsandbytes_cpu_path(model: torch.nn.Module, path: str = GENERIC) -> int:
    """Set the CPU path on every bitsandbytes Linear4bit in `model`; returns how many layers were set."""
    if path not in DESCRIPTIONS:
        raise ValueError(f"bitsandbytes CPU path {path!r}; accepted: {', '.join(DESCRIPTIONS)}")
    import bitsandbytes as bnb

    use_portable_cpu_dequantize()
    layers = [module for module in model.modules() if isinstance(module, bnb.nn.Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = path == PACKED
    return len(layers)


def cpu_has_avx512_bf16() -> bool:
    """What bitsandbytes itself detects; its packed path only runs where this is true."""
    from bitsandbytes.functional import has_avx512bf16

    return bool(has_avx512bf16())
