"""Which bitsandbytes CPU code path 4-bit layers take, chosen by train_core rather than by the CPU's features.

bitsandbytes 0.50 on CPU picks code by what the CPU supports. On a CPU with AVX512-BF16, `Linear4bit.forward` in
eval mode without grad repacks `weight.data` in place into a CPU-specific layout (and asserts that the output
dimension is a multiple of 32); training afterwards runs on the repacked weights. On a CPU with AVX512 its native
NF4 dequantize also returns wrong values when a weight row is not a whole number of 64-value blocks.
train_core therefore always chooses the generic path: layers never repack, and NF4 weights are dequantized by
bitsandbytes' native kernel only where it is exact on every CPU (rows of whole blocks; a test checks it is
bit-identical to the plain-PyTorch code), else by plain PyTorch, so results do not depend on the CPU.
"""
from __future__ import annotations

import ctypes as ct
import math
import warnings
from functools import lru_cache

import torch

GENERIC = "generic"
PACKED = "packed-avx512bf16"
DESCRIPTIONS = {
    GENERIC: "bitsandbytes CPU path generic (exact NF4 dequantize, then matmul; no AVX512-BF16 repacking)",
    PACKED: "bitsandbytes CPU path packed-avx512bf16 (repacks weights in place at the first eval forward)",
}


@lru_cache(maxsize=4)
def _byte_table(quant_type: str) -> torch.Tensor:
    """(256, 2): the two 4-bit code values each byte holds, high nibble first."""
    from bitsandbytes.functional import get_4bit_type

    code = get_4bit_type(quant_type, device="cpu").float()
    nibbles = torch.arange(256)
    return torch.stack((code[nibbles >> 4], code[nibbles & 0xF]), dim=1)


def dequantize_4bit_portable(
    A: torch.Tensor, absmax: torch.Tensor, blocksize: int, quant_type: str, shape: list[int], dtype: torch.dtype
) -> torch.Tensor:
    """bitsandbytes' 4-bit layout (two codes a byte, high nibble first; one fp32 absmax per block) in plain PyTorch."""
    packed = (A if A.dtype == torch.uint8 else A.view(torch.uint8)).reshape(-1)
    count = math.prod(shape)
    values = _byte_table(quant_type).index_select(0, packed.int()).reshape(-1)[:count]
    whole = count - count % blocksize
    out = torch.empty(count, dtype=torch.float32)
    out[:whole] = (values[:whole].view(-1, blocksize) * absmax[: whole // blocksize, None].float()).view(-1)
    if whole < count:
        out[whole:] = values[whole:] * absmax[whole // blocksize].float()
    return out.reshape(shape).to(dtype)


def dequantize_4bit_native(
    A: torch.Tensor, absmax: torch.Tensor, blocksize: int, quant_type: str, shape: list[int], dtype: torch.dtype
) -> torch.Tensor | None:
    """bitsandbytes' native CPU kernel where it is exact on every CPU (rows of whole blocks), else None."""
    from bitsandbytes.cextension import ErrorHandlerMockBNBNativeLibrary, lib
    from bitsandbytes.functional import get_ptr

    suffix = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype)
    if isinstance(lib, ErrorHandlerMockBNBNativeLibrary) or suffix is None or quant_type not in ("nf4", "fp4"):
        return None
    rows, columns = math.prod(shape[:-1]), shape[-1]
    if columns % blocksize or blocksize >= 2048:  # the AVX512 kernel is wrong for these (bitsandbytes 0.50)
        return None
    packed = (A if A.dtype == torch.uint8 else A.view(torch.uint8)).reshape(rows, columns // 2).contiguous()
    scales = absmax.float().contiguous()
    out = torch.empty(list(shape), dtype=dtype)
    kernel = getattr(lib, f"cdequantize_blockwise_cpu_{quant_type}_{suffix}")
    kernel(get_ptr(packed), get_ptr(scales), get_ptr(out), ct.c_longlong(blocksize), ct.c_longlong(rows),
           ct.c_longlong(columns))
    return out


def dequantize_4bit_cpu(
    A: torch.Tensor, absmax: torch.Tensor, blocksize: int, quant_type: str, shape: list[int], dtype: torch.dtype
) -> torch.Tensor:
    """The native kernel where it is exact (bit-identical to the portable code), else the portable code."""
    native = dequantize_4bit_native(A, absmax, blocksize, quant_type, shape, dtype)
    return native if native is not None else dequantize_4bit_portable(A, absmax, blocksize, quant_type, shape, dtype)


@lru_cache(maxsize=1)
def use_portable_cpu_dequantize() -> torch.library.Library:
    """Route bitsandbytes' 4-bit dequantize on CPU through dequantize_4bit_cpu (once per process).

    Registered on a Library of our own with allow_override: bitsandbytes registers its CPU kernel from Python on
    some torch versions, and torch 2.11 refuses to override that by default. The cache keeps the Library alive."""
    library = torch.library.Library("bitsandbytes", "IMPL")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="(?s).*Overriding a previously registered kernel", category=UserWarning)
        library.impl("dequantize_4bit", dequantize_4bit_cpu, "CPU", allow_override=True)
    return library


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
