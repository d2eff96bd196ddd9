"""NF4 dequantization (bitsandbytes layout, double-quantized absmax) with an optional LoRA merge.

Writes W + scale * B @ A in the compute dtype into a caller-owned buffer, in one pass: the packed
4-bit codes (two per byte, the first element in the high nibble), the 8-bit absmax of each 64-value
block and the fp32 absmax of each 256 of those are read once, and the rank-r LoRA product is added
on the fly, so a frozen base plus its adapter costs one GEMM instead of three.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from train_core.kernels import use_triton

BLOCKSIZE = 64
NESTED_BLOCKSIZE = 256
NF4_CODE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
)


class DequantTiles(NamedTuple):
    """The kernel's tile (rows x columns of the weight per program) and warps per program."""

    block_rows: int
    block_cols: int
    num_warps: int


# bench/nf4_dequant_speed.py on Llama-3-8B's projections with the LoRA merge (H200, 2026-11-30): 12.6 ms a pass
# against 14.0 for the (32, 256, 8) used before in one call, 15.1 against 14.4 in another; within that noise.
DEFAULT_TILES = DequantTiles(32, 256, 4)


@functools.lru_cache(maxsize=8)
def nf4_code(device: torch.device) -> torch.Tensor:
    return torch.tensor(NF4_CODE, dtype=torch.float32, device=device)


def absmax_reference(absmax_q: torch.Tensor, absmax2: torch.Tensor, code2: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """fp32 absmax of every 64-value block from its double-quantized form."""
    scales = absmax2.repeat_interleave(NESTED_BLOCKSIZE)[: absmax_q.numel()]
    return code2[absmax_q.long()] * scales + offset


def dequantize_reference(
    packed: torch.Tensor, absmax_q: torch.Tensor, absmax2: torch.Tensor, code2: torch.Tensor, offset: torch.Tensor,
    out: torch.Tensor, lora_a: torch.Tensor | None = None, lora_b: torch.Tensor | None = None, scale: float = 0.0,
) -> torch.Tensor:
    """Plain-PyTorch NF4 dequantization (+ scale * B @ A, operands rounded to out's dtype) into `out` (rows, cols)."""
    rows, cols = out.shape
    numel = rows * cols
    codes = torch.stack([packed >> 4, packed & 15], dim=-1).reshape(-1)[:numel]
    absmax = absmax_reference(absmax_q, absmax2, code2, offset).repeat_interleave(BLOCKSIZE)[:numel]
    weight = (nf4_code(packed.device)[codes.long()] * absmax).view(rows, cols)
    if lora_a is not None:
        weight = weight + scale * (lora_b.to(out.dtype).float() @ lora_a.to(out.dtype).float())
    return out.copy_(weight)


def dequantize(
    packed: torch.Tensor, absmax_q: torch.Tensor, absmax2: torch.Tensor, code2: torch.Tensor, offset: torch.Tensor,
    out: torch.Tensor, lora_a: torch.Tensor | None = None, lora_b: torch.Tensor | None = None, scale: float = 0.0,
    tiles: DequantTiles = DEFAULT_TILES,
) -> torch.Tensor:
    """W (+ scale * B @ A) into the contiguous `out` (rows, cols); the kernel needs cols % 64 == 0."""
    rows, cols = out.shape
    if not out.is_contiguous():
        raise ValueError("NF4 dequantization needs a contiguous output")
    if cols % BLOCKSIZE or not use_triton(out):
        return dequantize_reference(packed, absmax_q, absmax2, code2, offset, out, lora_a, lora_b, scale)
    has_lora = lora_a is not None
    rank = lora_a.shape[0] if has_lora else 1
    grid = (-(-rows // tiles.block_rows), -(-cols // tiles.block_cols))
    _kernel()[grid](
        packed, absmax_q, absmax2, code2, offset, nf4_code(out.device), out,
        lora_a if has_lora else out, lora_b if has_lora else out, float(scale), rows, cols, rank,
        HAS_LORA=has_lora, RANK_PAD=max(16, 1 << (rank - 1).bit_length()),
        BLOCK_ROWS=tiles.block_rows, BLOCK_COLS=tiles.block_cols, num_warps=tiles.num_warps,
    )
    return out


@functools.lru_cache(maxsize=1)
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def nf4_dequant_kernel(
        packed_ptr, absmax_q_ptr, absmax2_ptr, code2_ptr, offset_ptr, code_ptr, out_ptr, a_ptr, b_ptr, scale,
        rows, cols, rank,
        HAS_LORA: tl.constexpr, RANK_PAD: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr,
    ):
        # a tile of BLOCK_ROWS rows x BLOCK_COLS columns; every 64-value absmax block lies inside one row
        row = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        first_col = tl.program_id(1) * BLOCK_COLS
        row_ok = row < rows
        row64 = row.to(tl.int64)
        pair = first_col // 2 + tl.arange(0, BLOCK_COLS // 2)
        byte = tl.load(packed_ptr + row64[:, None] * (cols // 2) + pair[None, :], mask=row_ok[:, None] & (pair < cols // 2)[None, :], other=0)
        high = tl.load(code_ptr + (byte >> 4).to(tl.int32))
        low = tl.load(code_ptr + (byte & 15).to(tl.int32))
        values = tl.reshape(tl.join(high, low), (BLOCK_ROWS, BLOCK_COLS))
        block_col = first_col // 64 + tl.arange(0, BLOCK_COLS // 64)
        block = row64[:, None] * (cols // 64) + block_col[None, :]
        block_ok = row_ok[:, None] & (block_col < cols // 64)[None, :]
        absmax_q = tl.load(absmax_q_ptr + block, mask=block_ok, other=0)
        absmax2 = tl.load(absmax2_ptr + block // 256, mask=block_ok, other=0.0)
        absmax = tl.load(code2_ptr + absmax_q.to(tl.int32)) * absmax2 + tl.load(offset_ptr)
        weight = tl.reshape(
            tl.reshape(values, (BLOCK_ROWS, BLOCK_COLS // 64, 64)) * absmax[:, :, None], (BLOCK_ROWS, BLOCK_COLS)
        )
        col = first_col + tl.arange(0, BLOCK_COLS)
        dtype = out_ptr.dtype.element_ty
        if HAS_LORA:
            k = tl.arange(0, RANK_PAD)
            lora_b = tl.load(b_ptr + row[:, None] * rank + k[None, :], mask=row_ok[:, None] & (k[None, :] < rank), other=0.0)
            lora_a = tl.load(a_ptr + k[:, None] * cols + col[None, :], mask=(k[:, None] < rank) & (col[None, :] < cols), other=0.0)
            weight += scale * tl.dot(lora_b.to(dtype).to(tl.float32), lora_a.to(dtype).to(tl.float32))
        mask = row_ok[:, None] & (col[None, :] < cols)
        tl.store(out_ptr + row64[:, None] * cols + col[None, :], weight.to(dtype), mask=mask)

    return nf4_dequant_kernel
