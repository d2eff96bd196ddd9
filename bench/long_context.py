"""Longest context the fast engine trains at batch 1 within a GPU memory cap (80 GiB emulates an H100 80GB).

Trains one optimizer step per length, in increasing order, with offloaded layer inputs and tiled MLP,
until one runs out of memory; records peak allocated memory, seconds per step and the pinned host memory
for each length. Offload pins at most a host budget (--host-budget-gib, default the engine's: 80 % of the
host's available memory); layer inputs past it stay on the GPU. With --layers below the architecture's
depth, the full model's peak is estimated from the measured one plus the missing layers' NF4 weights and
adapter state (each layer's is measured); offload keeps no other per-layer activations on the GPU.
Inputs kept on the GPU add to the peak one fewer than their number: with all inputs offloaded the peak
already holds two (the one being restored and the next, prefetched), with k kept it holds the last
layer's and the k kept ones, all alive at the start of backward (measured: 2 kept, +1 input).

    python bench/long_context.py --model llama-3-8b --layers 4 --lengths 131072 262144 409600 --out $OUT
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ARCHITECTURES, GIB, AdapterOptimizer, build_model, environment, fast_step, release, write_result  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llama-3-8b")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--lengths", type=int, nargs="+", required=True)
    parser.add_argument("--cap-gib", type=float, default=80.0)
    parser.add_argument("--tile", type=int, default=16384)
    parser.add_argument("--ce", type=int, default=1024)
    parser.add_argument("--host-budget-gib", type=float, default=None)
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "spottune-bench-models")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from train_core.fast.engine import FastEngine
    from train_core.fast.host_store import available_host_bytes
    from train_core.fast.loading import AdapterSpec

    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib * GIB / total))
    path = build_model(args.model, args.root, args.layers)
    release()
    engine = FastEngine(
        path, AdapterSpec.from_target_modules(16, 16, "all-linear", seed=0), torch.device("cuda"), "offload",
        ce_budget_mib=args.ce, mlp_tile_rows=args.tile,
        host_budget_bytes=None if args.host_budget_gib is None else int(args.host_budget_gib * GIB),
    )
    optimizer = AdapterOptimizer(engine.trainable_parameters())
    store = engine.recompute.offloader.store
    host = {"host_available_gib": round(available_host_bytes() / GIB, 1), "host_budget_gib": round(store.budget_bytes / GIB, 1)}
    first = engine.model.layers[0]
    # NF4 weights, plus adapter parameters, their fp32 gradients and 8-bit AdamW's two states
    layer_bytes = sum(base.nbytes() for group in first.groups.values() for base in group.bases) + sum(
        p.numel() * (2 * p.element_size() + 2) for p in first.parameters()
    )
    depth = ARCHITECTURES[args.model]["num_hidden_layers"]
    built = len(engine.model.layers)
    vocab = engine.model.spec.vocab
    for length in args.lengths:
        torch.cuda.reset_peak_memory_stats()
        ids = torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(length))
        record = {"run": f"long context {args.model} {built}/{depth} layers, {length} tokens, cap {args.cap_gib} GiB, "
                         f"host budget {host['host_budget_gib']} GiB"}
        try:
            torch.cuda.synchronize()
            started = time.perf_counter()
            loss = fast_step(engine, optimizer, [ids])
            torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            peak = torch.cuda.max_memory_allocated()
            input_bytes = length * engine.model.spec.hidden * 2
            kept_here = len(engine.recompute.offloader.kept)
            host_per_layer = -(-input_bytes // store.chunk_bytes) * store.chunk_bytes
            host_layers = min(depth - 1, store.budget_bytes // host_per_layer)
            kept_full = depth - 1 - host_layers
            offloaded_peak = peak - max(0, kept_here - 1) * input_bytes
            estimate = offloaded_peak + (depth - built) * layer_bytes + max(0, kept_full - 1) * input_bytes
            record.update(
                tokens=length, s_per_step=round(seconds, 2), loss=round(loss, 4),
                peak_alloc_gib=round(peak / GIB, 2), peak_reserved_gib=round(torch.cuda.max_memory_reserved() / GIB, 2),
                inputs_kept_on_gpu=kept_here, host_pinned_gib=round(store.held_bytes / GIB, 2), **host,
                full_depth_inputs_kept_on_gpu=kept_full, full_depth_host_pinned_gib=round(host_layers * host_per_layer / GIB, 1),
                full_depth_peak_estimate_gib=round(estimate / GIB, 2),
                full_depth_s_per_step_estimate=round(seconds * depth / built),
            )
        except torch.cuda.OutOfMemoryError as error:
            record.update(tokens=length, error=f"OOM: {str(error).splitlines()[0][:200]}")
        write_result(args.out, {**record, **environment()})
        optimizer.drop_grads()
        release()
        if "error" in record:
            break


if __name__ == "__main__":
    main()
