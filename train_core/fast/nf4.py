"""NF4 4-bit weights in the bitsandbytes layout (blocksize 64, double-quantized absmax), quantized in PyTorch."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from train_core.kernels.nf4_dequant import BLOCKSIZE, DEFAULT_TILES, NESTED_BLOCKSIZE, NF4_CODE, DequantTiles, dequantize


@functools.lru_cache(maxsize=1)
def dynamic_map() -> tuple[float, ...]:
    """The signed 8-bit dynamic-exponent code bitsandbytes uses for double-quantized absmax (256 sorted values)."""
    values: list[float] = []
    exponent_bits, non_sign_bits = 7, 7
    for i in range(exponent_bits):
        items = 2 ** (i + non_sign_bits - exponent_bits) + 1
        bounds = torch.linspace(0.1, 1, items, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        magnitude = 10 ** (-(exponent_bits - 1) + i)
        values += (magnitude * means).tolist() + (-magnitude * means).tolist()
    values += [0.0, 1.0]
    values += [0.0] * (256 - len(values))
    return tuple(sorted(values))


def _nearest_code(scaled: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Index of the nearest entry of the sorted `code` for each value in [-1, 1]."""
    return torch.bucketize(scaled, (code[:-1] + code[1:]) / 2, out_int32=True)


def _blockwise_absmax(values: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(absmax per block, values scaled into [-1, 1]); a short last block is scaled by division like bitsandbytes."""
    full = values.numel() - values.numel() % blocksize
    blocks = values[:full].view(-1, blocksize)
    absmax = blocks.abs().amax(dim=1)
    scaled = torch.clamp(blocks * (1.0 / absmax.clamp(min=1e-38))[:, None], -1, 1).reshape(-1)
    if full < values.numel():
        tail_max = values[full:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, tail_max[None]])
        scaled = torch.cat([scaled, torch.clamp(values[full:] / tail_max, -1, 1)])
    return absmax, scaled


@dataclass
class NF4Weight:
    """A frozen (out, in) weight: packed codes, double-quantized absmax, and what undoes it."""

    packed: torch.Tensor  # uint8 (out * in / 2,)
    absmax_q: torch.Tensor  # uint8 (out * in / 64,)
    absmax2: torch.Tensor  # fp32 (ceil(out * in / 64 / 256),)
    code2: torch.Tensor  # fp32 (256,)
    offset: torch.Tensor  # fp32 (1,)
    shape: tuple[int, int]

    def dequantize_into(
        self, out: torch.Tensor, lora_a: torch.Tensor | None = None, lora_b: torch.Tensor | None = None, scale: float = 0.0,
        tiles: DequantTiles = DEFAULT_TILES,
    ) -> torch.Tensor:
        return dequantize(
            self.packed, self.absmax_q, self.absmax2, self.code2, self.offset, out, lora_a, lora_b, scale, tiles
        )

    def dequantize(self, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        return self.dequantize_into(torch.empty(self.shape, dtype=dtype, device=self.packed.device))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.packed, self.absmax_q, self.absmax2, self.code2, self.offset))


def quantize_nf4(weight: torch.Tensor) -> NF4Weight:
    """Quantize a 2-D weight exactly as bitsandbytes' quantize_4bit(nf4, blocksize=64, compress_statistics=True)."""
    rows, cols = weight.shape
    device = weight.device
    values = weight.detach().reshape(-1).float()
    absmax, scaled = _blockwise_absmax(values, BLOCKSIZE)
    if scaled.numel() % 2:
        scaled = torch.nn.functional.pad(scaled, (0, 1))
    codes = _nearest_code(scaled, torch.tensor(NF4_CODE, device=device)).to(torch.uint8)
    packed = (codes[0::2] << 4) | codes[1::2]
    del values, scaled, codes
    offset = absmax.mean()
    code2 = torch.tensor(dynamic_map(), dtype=torch.float32, device=device)
    absmax2, scaled2 = _blockwise_absmax(absmax - offset, NESTED_BLOCKSIZE)
    absmax_q = _nearest_code(scaled2, code2).to(torch.uint8)
    return NF4Weight(packed, absmax_q, absmax2, code2, offset.reshape(1), (rows, cols))
