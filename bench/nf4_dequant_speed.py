"""NF4 dequantization speed: the engine's kernel (with and without the LoRA merge) at several tile shapes, against
bitsandbytes' own dequantize_4bit and a plain bf16 write of the same size, on one model's projection shapes.

One "pass" dequantizes every projection of every layer once; a training micro-batch in checkpointing `none` makes
two (forward and backward). One JSON line per (kernel, tiles) goes to --out/dequant.jsonl:

    python3 bench/nf4_dequant_speed.py --model llama-3-8b --out $OUT
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ARCHITECTURES, environment  # noqa: E402
from train_core.fast.nf4 import quantize_nf4  # noqa: E402
from train_core.kernels.nf4_dequant import DEFAULT_TILES, DequantTiles  # noqa: E402

TILES = [DequantTiles(*t) for t in (
    (32, 256, 8), (64, 256, 8), (128, 256, 8), (32, 512, 8), (64, 512, 8), (16, 512, 4), (128, 128, 4),
    (64, 256, 4), (32, 256, 4), (64, 128, 4), (32, 128, 4), (16, 256, 2),
)]


def projection_shapes(model: str) -> list[tuple[int, int]]:
    """(out, in) of the 7 adapted projections of one layer."""
    arch = ARCHITECTURES[model]
    hidden, inter = arch["hidden_size"], arch["intermediate_size"]
    kv = arch["num_key_value_heads"] * hidden // arch["num_attention_heads"]
    return [(hidden, hidden), (kv, hidden), (kv, hidden), (hidden, hidden), (inter, hidden), (inter, hidden),
            (hidden, inter)]


def time_ms(run, repeats: int) -> float:
    """Median of `repeats` timings of run() in milliseconds (CUDA events)."""
    run()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def arguments(description: str) -> argparse.Namespace:
    """--model, --rank, --repeats and --out, as the dequantization benchmarks take them."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llama-3-8b", choices=sorted(ARCHITECTURES))
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", required=True)
    return parser.parse_args()


def main() -> int:
    args = arguments(__doc__)
    import bitsandbytes.functional as bnb

    torch.manual_seed(0)
    layers = ARCHITECTURES[args.model]["num_hidden_layers"]
    shapes = projection_shapes(args.model)
    weights = [torch.randn(shape, device="cuda", dtype=torch.bfloat16) * 0.02 for shape in shapes]
    ours = [quantize_nf4(weight) for weight in weights]
    theirs = [bnb.quantize_4bit(weight, quant_type="nf4", compress_statistics=True, blocksize=64) for weight in weights]
    loras = [(torch.randn(args.rank, cols, device="cuda") * 0.01, torch.randn(rows, args.rank, device="cuda") * 0.01)
             for rows, cols in shapes]
    outs = [torch.empty(shape, device="cuda", dtype=torch.bfloat16) for shape in shapes]
    for nf4, (packed, state), out in zip(ours, theirs, outs):  # same weights, same values from both kernels
        torch.testing.assert_close(nf4.dequantize_into(out), bnb.dequantize_4bit(packed, state), rtol=0, atol=0)
    params = sum(rows * cols for rows, cols in shapes)
    context = {**environment(), "model": args.model, "layers": layers, "rank": args.rank,
               "params_per_layer": params}

    def record(kernel: str, tiles: DequantTiles | None, per_layer_ms: float) -> None:
        pass_ms = per_layer_ms * layers
        written = 2 * params * layers
        line = {**context, "kernel": kernel, "tiles": tiles, "default": tiles == DEFAULT_TILES,
                "ms_per_pass": pass_ms, "written_gb_per_s": written / pass_ms / 1e6}
        print(f"{kernel:<16} {str(tuple(tiles)) if tiles else '':<16} {pass_ms:8.2f} ms/pass "
              f"{line['written_gb_per_s']:7.0f} GB/s written", flush=True)
        with open(Path(args.out) / "dequant.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")

    Path(args.out).mkdir(parents=True, exist_ok=True)
    record("bf16 write", None, time_ms(lambda: [out.fill_(1.0) for out in outs], args.repeats))
    record("bitsandbytes", None, time_ms(lambda: [bnb.dequantize_4bit(p, s, out=o) for (p, s), o in zip(theirs, outs)],
                                         args.repeats))
    for tiles in TILES:
        try:
            record("ours", tiles, time_ms(lambda: [w.dequantize_into(o, tiles=tiles) for w, o in zip(ours, outs)],
                                          args.repeats))
            record("ours+lora", tiles, time_ms(
                lambda: [w.dequantize_into(o, a, b, 2.0, tiles) for w, o, (a, b) in zip(ours, outs, loras)],
                args.repeats))
        except Exception as error:  # a tile the compiler refuses (registers) is reported, the others still run
            print(f"tiles {tuple(tiles)}: {type(error).__name__}: {str(error).splitlines()[0]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
