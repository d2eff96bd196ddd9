"""Tokens/s and peak memory of the standard HF QLoRA recipe and of the fast engine, in one process.

Each run is `engine:MICROxACCUM[:mode][:ce=MiB][:tile=ROWS][:tensors][:graphs][:kept][:prof][:mem]`, e.g. `hf:2x4`, `fast:2x4:offload:ce=256`;
every step holds MICRO*ACCUM sequences of --seq random token ids. Engines: `hf` is the standard recipe
(train mode, gradient checkpointing on), `hf-nockpt` the same recipe without checkpointing, `fast` ours. The first fast run also reports
start-up (safetensors load + NF4 quantization + first optimizer step, Triton compilation included,
with an empty Triton cache). `:prof` profiles one more step (GPU-busy share, CUDA-time table, trace-<run>.json.gz);
`:mem` saves the allocator's history of the run to memory-<run>.pickle.gz; `:tensors` steps the fast engine's
optimizer per adapter tensor instead of over the one flat buffer the Trainer uses; `:graphs` replays the decoder
layers as CUDA graphs (every checkpointing mode; captured at the first step, so inside the warm-up). `:kept` keeps the
merged weights between optimizer steps (one dequantization pass a step, for every linear weight in bf16).

    python bench/qlora_speed.py --model qwen2-1.5b --runs hf:2x4 hf:8x1 fast:2x4:offload fast:4x2:none --out $OUT
"""
from __future__ import annotations

import argparse
import gzip
import pickle
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    AdapterOptimizer, adamw_8bit, build_model, environment, fast_step, hf_step, load_hf_recipe, random_batch, release, summarise,
    timed_steps, write_result,
)


def parse_run(spec: str) -> dict:
    parts = spec.split(":")
    micro, accum = (int(v) for v in parts[1].split("x"))
    run = {"engine": parts[0], "micro": micro, "accum": accum, "mode": "full", "ce": 512, "tile": None, "profile": False,
           "memory": False, "per_tensor": False, "graphs": False, "kept": False}
    for part in parts[2:]:
        if part == "tensors":
            run["per_tensor"] = True
        elif part == "graphs":
            run["graphs"] = True
        elif part == "kept":
            run["kept"] = True
        elif part == "prof":
            run["profile"] = True
        elif part == "mem":
            run["memory"] = True
        elif part.startswith("ce="):
            run["ce"] = int(part[3:])
        elif part.startswith("tile="):
            run["tile"] = int(part[5:])
        else:
            run["mode"] = part
    return run


HF_ENGINES = {"hf": True, "hf-nockpt": False}  # engine name -> gradient checkpointing


def run_hf(path: Path, run: dict, seq: int, vocab: int, warmup: int, steps: int, profile_out: Path) -> tuple[list[float], dict]:
    model = load_hf_recipe(path, checkpointing=HF_ENGINES[run["engine"]])
    if not model.training or model.base_model.model.is_gradient_checkpointing != HF_ENGINES[run["engine"]]:
        raise RuntimeError(f"{run['engine']}: the recipe is not in train mode with checkpointing {HF_ENGINES[run['engine']]}")
    optimizer = adamw_8bit([p for p in model.parameters() if p.requires_grad])

    def step(index: int) -> float:
        return hf_step(model, optimizer, [random_batch(index, m, run["micro"], seq, vocab) for m in range(run["accum"])])

    seconds, losses = timed_steps(step, warmup, steps)
    return seconds, {"losses": [round(l, 4) for l in losses]}


def run_fast(path: Path, run: dict, seq: int, vocab: int, warmup: int, steps: int, profile_out: Path) -> tuple[list[float], dict]:
    from train_core.fast.engine import FastEngine
    from train_core.fast.loading import AdapterSpec

    torch.cuda.synchronize()
    started = time.perf_counter()
    engine = FastEngine(
        path, AdapterSpec.from_target_modules(16, 16, "all-linear", seed=0), torch.device("cuda"), run["mode"],
        ce_budget_mib=run["ce"], mlp_tile_rows=run["tile"], cuda_graphs=run["graphs"], merged_weights=run["kept"],
    )
    torch.cuda.synchronize()
    loaded = time.perf_counter() - started
    optimizer = AdapterOptimizer(engine.trainable_parameters(), per_tensor=run["per_tensor"])
    first_step: list[float] = []

    def step(index: int) -> float:
        begin = time.perf_counter()
        loss = fast_step(engine, optimizer, [random_batch(index, m, run["micro"], seq, vocab) for m in range(run["accum"])])
        if index == 0:
            torch.cuda.synchronize()
            first_step.append(time.perf_counter() - begin)
        return loss

    seconds, losses = timed_steps(step, warmup, steps)
    profiled = profile_step(lambda: step(warmup + steps), profile_out, run["slug"]) if run["profile"] else {}
    extra = {**profiled, "load_s": round(loaded, 2), "first_step_s": round(first_step[0], 2), "startup_s": round(loaded + first_step[0], 2),
             "losses": [round(l, 4) for l in losses], "engine": engine.description}
    return seconds, extra


def profile_step(step, out: Path, slug: str) -> dict:
    """Append the CUDA-time table of one profiled step to `out` and save its timeline beside it (a gzipped Chrome
    trace, to find where the GPU waits); return how busy the GPU was during it."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        torch.cuda.synchronize()
        started = time.perf_counter()
        step()
        torch.cuda.synchronize()
        wall_us = (time.perf_counter() - started) * 1e6
    with open(out, "a", encoding="utf-8") as handle:
        handle.write(prof.key_averages().table(sort_by="self_device_time_total", row_limit=30, max_name_column_width=60) + "\n")
    trace = out.with_name(f"trace-{slug}.json")
    prof.export_chrome_trace(str(trace))
    with open(trace, "rb") as raw, gzip.open(f"{trace}.gz", "wb") as packed:
        packed.write(raw.read())
    trace.unlink()
    spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type == DeviceType.CUDA)
    busy, end = 0.0, float("-inf")
    for start, stop in spans:  # union of the GPU's kernel and copy intervals
        if stop > end:
            busy += stop - max(start, end)
            end = stop
    return {"profiled_step_s": round(wall_us / 1e6, 4), "gpu_busy_s": round(busy / 1e6, 4),
            "gpu_busy_pct": round(100 * busy / wall_us, 1)}


MEMORY_EVENTS = 400_000


def dump_memory_history(target: Path) -> None:
    """Save the allocator's event history and segments (torch.cuda.memory._snapshot) for offline reading."""
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    with gzip.open(target, "wb") as handle:
        pickle.dump(snapshot, handle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2-1.5b")
    parser.add_argument("--layers", type=int, default=None, help="build the architecture with fewer layers")
    parser.add_argument("--runs", nargs="+", required=True)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "spottune-bench-models")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment()
    started = time.perf_counter()
    path = build_model(args.model, args.root, args.layers)
    print(f"built {path} in {time.perf_counter() - started:.1f}s", flush=True)
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(path).vocab_size
    for spec in args.runs:
        run = {**parse_run(spec), "slug": re.sub('[^A-Za-z0-9.-]', '_', spec)}
        release()
        label = f"{args.model}{'' if args.layers is None else f'-{args.layers}l'} {spec} seq {args.seq}"
        try:
            runner = run_hf if run["engine"] in HF_ENGINES else run_fast
            if run["memory"]:
                torch.cuda.memory._record_memory_history(max_entries=MEMORY_EVENTS, stacks="python")
            seconds, extra = runner(path, run, args.seq, vocab, args.warmup, args.steps, args.out / "profile.txt")
            if run["memory"]:
                dump_memory_history(args.out / f"memory-{run['slug']}.pickle.gz")
            tokens = run["micro"] * run["accum"] * args.seq
            write_result(args.out, {**summarise(label, seconds, tokens, extra), **env})
        except Exception as error:  # keep measuring the other runs; the failure is recorded
            traceback.print_exc()
            write_result(args.out, {"run": label, "error": f"{type(error).__name__}: {str(error)[:300]}", **env})
        release()


if __name__ == "__main__":
    main()
