"""NF4 dequantization with the LoRA merge: which form of the kernel writes closest to the bf16 write floor.

The engine's kernel (train_core/kernels/nf4_dequant.py) looks each 4-bit code up separately (two gathers a byte),
and merges the adapter with a float32 dot of operands read as float32 for every tile. This benchmark times forms
that change one thing each, on one model's projection shapes, each checked against the plain-PyTorch reference:

- `pair_lut`: one 8-byte gather a byte from a 256-entry table of both codes' values, instead of two;
- `bf16_dot`: the adapter product on bf16 operands (products exact in fp32, as the reference rounds them);
- `bf16_operands`: A and B handed over already in bf16 (cast once per optimizer step), halving their reads.

    python3 bench/nf4_dequant_variants.py --model llama-3-8b --out $OUT
"""
from __future__ import annotations

import functools
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ARCHITECTURES, environment  # noqa: E402
from bench.nf4_dequant_speed import arguments, projection_shapes, time_ms  # noqa: E402
from train_core.fast.nf4 import NF4Weight, quantize_nf4  # noqa: E402
from train_core.kernels.nf4_dequant import NF4_CODE, DequantTiles, dequantize_reference  # noqa: E402

TILES = [DequantTiles(*t) for t in (
    (32, 256, 4), (64, 256, 4), (64, 256, 8), (128, 256, 8), (32, 512, 4), (64, 128, 4), (128, 128, 4), (16, 512, 4),
)]


@functools.lru_cache(maxsize=2)
def pair_table(device: torch.device) -> torch.Tensor:
    """int64 per byte value: the high nibble's fp32 code in the low 32 bits, the low nibble's in the high."""
    code = torch.tensor(NF4_CODE, dtype=torch.float32)
    byte = torch.arange(256)
    return torch.stack([code[byte >> 4], code[byte & 15]], dim=1).contiguous().view(torch.int64).reshape(256).to(device)


@functools.lru_cache(maxsize=1)
def kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def dequant(
        packed_ptr, absmax_q_ptr, absmax2_ptr, code2_ptr, offset_ptr, code_ptr, pair_ptr, out_ptr, a_ptr, b_ptr, scale,
        rows, cols, rank,
        PAIR_LUT: tl.constexpr, BF16_DOT: tl.constexpr, RANK_PAD: tl.constexpr,
        BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr,
    ):
        row = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        first_col = tl.program_id(1) * BLOCK_COLS
        row_ok = row < rows
        row64 = row.to(tl.int64)
        pair = first_col // 2 + tl.arange(0, BLOCK_COLS // 2)
        byte = tl.load(packed_ptr + row64[:, None] * (cols // 2) + pair[None, :], mask=row_ok[:, None] & (pair < cols // 2)[None, :], other=0)
        if PAIR_LUT:
            both = tl.load(pair_ptr + byte.to(tl.int32))
            high = (both & 0xFFFFFFFF).to(tl.uint32).to(tl.float32, bitcast=True)
            low = (both >> 32).to(tl.uint32).to(tl.float32, bitcast=True)
        else:
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
        k = tl.arange(0, RANK_PAD)
        lora_b = tl.load(b_ptr + row[:, None] * rank + k[None, :], mask=row_ok[:, None] & (k[None, :] < rank), other=0.0)
        lora_a = tl.load(a_ptr + k[:, None] * cols + col[None, :], mask=(k[:, None] < rank) & (col[None, :] < cols), other=0.0)
        if BF16_DOT:
            weight += scale * tl.dot(lora_b.to(dtype), lora_a.to(dtype))
        else:
            weight += scale * tl.dot(lora_b.to(dtype).to(tl.float32), lora_a.to(dtype).to(tl.float32))
        mask = row_ok[:, None] & (col[None, :] < cols)
        tl.store(out_ptr + row64[:, None] * cols + col[None, :], weight.to(dtype), mask=mask)

    return dequant


def run_variant(nf4: NF4Weight, out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float, pair_lut: bool,
                bf16_dot: bool, tiles: DequantTiles) -> torch.Tensor:
    rows, cols = out.shape
    from train_core.kernels.nf4_dequant import nf4_code

    grid = (-(-rows // tiles.block_rows), -(-cols // tiles.block_cols))
    kernel()[grid](
        nf4.packed, nf4.absmax_q, nf4.absmax2, nf4.code2, nf4.offset, nf4_code(out.device), pair_table(out.device), out,
        a, b, float(scale), rows, cols, a.shape[0], PAIR_LUT=pair_lut, BF16_DOT=bf16_dot,
        RANK_PAD=max(16, 1 << (a.shape[0] - 1).bit_length()),
        BLOCK_ROWS=tiles.block_rows, BLOCK_COLS=tiles.block_cols, num_warps=tiles.num_warps,
    )
    return out


def main() -> int:
    args = arguments(__doc__)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    layers = ARCHITECTURES[args.model]["num_hidden_layers"]
    shapes = projection_shapes(args.model)
    ours = [quantize_nf4(torch.randn(shape, device=device, dtype=torch.bfloat16) * 0.02) for shape in shapes]
    loras = [(torch.randn(args.rank, cols, device=device) * 0.01, torch.randn(rows, args.rank, device=device) * 0.01)
             for rows, cols in shapes]
    loras_bf16 = [(a.to(torch.bfloat16), b.to(torch.bfloat16)) for a, b in loras]
    outs = [torch.empty(shape, device=device, dtype=torch.bfloat16) for shape in shapes]
    expected = [dequantize_reference(w.packed, w.absmax_q, w.absmax2, w.code2, w.offset, torch.empty_like(o), a, b, 2.0)
                for w, o, (a, b) in zip(ours, outs, loras)]
    params = sum(rows * cols for rows, cols in shapes)
    context = {**environment(), "model": args.model, "layers": layers, "rank": args.rank, "params_per_layer": params}
    Path(args.out).mkdir(parents=True, exist_ok=True)

    def record(variant: dict, tiles: DequantTiles | None, per_layer_ms: float) -> None:
        pass_ms = per_layer_ms * layers
        line = {**context, **variant, "tiles": tiles, "ms_per_pass": pass_ms,
                "written_gb_per_s": 2 * params * layers / pass_ms / 1e6}
        print(f"{json.dumps(variant):<70} {str(tuple(tiles)) if tiles else '':<16} {pass_ms:8.2f} ms/pass", flush=True)
        with open(Path(args.out) / "dequant_variants.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")

    if device.type == "cuda":
        record({"kernel": "bf16 write"}, None, time_ms(lambda: [out.fill_(1.0) for out in outs], args.repeats))
    for (pair_lut, bf16_dot, bf16_operands), tiles in itertools.product(
        itertools.product((False, True), repeat=3), TILES if device.type == "cuda" else TILES[:1]
    ):
        variant = {"kernel": "variant", "pair_lut": pair_lut, "bf16_dot": bf16_dot, "bf16_operands": bf16_operands}
        operands = loras_bf16 if bf16_operands else loras

        def run() -> list[torch.Tensor]:
            return [run_variant(w, o, a, b, 2.0, pair_lut, bf16_dot, tiles) for w, o, (a, b) in zip(ours, outs, operands)]

        try:
            for got, want in zip(run(), expected):
                torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-3)
            if device.type == "cuda":
                record(variant, tiles, time_ms(run, args.repeats))
            else:
                print(f"{json.dumps(variant)} matches the reference", flush=True)
        except Exception as error:  # a refused tile or a wrong variant is reported, the others still run
            print(f"{json.dumps(variant)} {tuple(tiles)}: {type(error).__name__}: {str(error).splitlines()[0]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
