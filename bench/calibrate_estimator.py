"""Measure peak VRAM and step time of train_core's own training step over a matrix of job shapes.

Each architecture is built from its config with random weights (nothing is downloaded), loaded through
train_core's engine exactly as `spottune train` loads it, and stepped by the Trainer's own optimizer-step
code on synthetic packed rows. One CSV row per point goes to cost_models/data/calibration.csv (or --out),
tagged with the card, the engine and library versions and the date; rerun this whenever the engine
changes how it uses memory or time, then refit with `python -m cost_models.fit`.

    python bench/calibrate_estimator.py --out cost_models/data/calibration.csv --deadline 200
    python bench/calibrate_estimator.py --device cpu --matrix smoke --out /tmp/calib.csv   # dry run
    python bench/calibrate_estimator.py --matrix heldout --split heldout --out ... --stats-out stats.jsonl
    python bench/calibrate_estimator.py --matrix graphs --out $OUT/graphs.csv --stats-out ... --deadline 135

--split marks the rows: `fit` rows are fitted, `heldout` rows are only scored against the fit (accuracy on
points it never saw). When an engine change moves its memory or time, mark that engine's older runs `superseded`
in the CSV by hand: they stay as history and are neither fitted nor scored. --stats-out adds the caching allocator's pool statistics per point (where reserved
memory goes beyond allocated).

--engine is train_core's model.engine: auto (default) measures what train_core picks per group (the fast
engine for NF4 Llama/Qwen2/Mistral, transformers + PEFT otherwise); each row names the engine that ran.

A point with cuda_graphs=True (the `graphs` matrix) replays the fast engine's decoder layers as CUDA graphs, built
afresh for that point as `spottune train` builds them for a job of its checkpointing, micro-batch and sequence length,
and captured in its first (untimed) step; other points drop them. The `cuda_graphs` column records what ran: False
where graphs do not apply (the CPU dry run, the transformers + PEFT engine, a model the engine cannot capture), so
such a point is recorded as the eager point it was; one whose micro-batches ran partly eager gets status
`partly-eager` (never fitted). Appending to a CSV of an older bench first gives it today's header (its rows read the
new columns as empty).

Groups run one after another in this process and rows are appended in that order: the fast engine's
dequantization buffers (train_core.fast.lora.BUFFERS) are module-global and only grow, so a group inherits
the biggest earlier model's; cost_models.calibration.load_measurements replays the order to count them.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import functools
import gc
import importlib.metadata
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cost_models.architectures import Architecture, resolve_architecture  # noqa: E402

ENGINE_NAMES = {"HFEngine": "train_core-hf", "FastEngine": "train_core-fast"}  # as cost_models names them
COLUMNS = [
    "run", "date", "card", "engine", "versions", "arch", "layers", "quantization", "lora_rank", "lora_targets",
    "checkpointing", "seq_len", "micro_batch", "grad_accum", "samples_per_row", "tokens_per_micro_batch",
    "targets_per_micro_batch", "status", "peak_allocated_gib", "peak_reserved_gib", "step_s", "step_s_min",
    "weights_gib", "lora_params", "context_gib", "timed_steps", "checkpoint_mb", "checkpoint_s", "split",
    "input_embedding", "cuda_graphs", "equal_lengths",
]


@dataclass(frozen=True)
class Point:
    checkpointing: str  # none | full | offload
    seq_len: int
    micro_batch: int
    samples_per_row: int  # 1 = one sample per row (plain causal attention when micro_batch is 1)
    grad_accum: int = 1
    cuda_graphs: bool = False  # replay the layers as CUDA graphs (fast engine on CUDA only)


@dataclass(frozen=True)
class Group:
    """Points that share one loaded model: architecture (optionally truncated), weight format and LoRA rank."""

    arch: str
    quantization: str
    rank: int
    points: tuple[Point, ...]
    layers: int | None = None
    targets: tuple[str, ...] | None = None  # None = all-linear


P = Point
G = functools.partial(Point, cuda_graphs=True)
MATRIX = {
    "default": (
        Group("llama-3-8b", "bf16", 8, (
            P("none", 16384, 1, 1), P("full", 8192, 2, 4), P("full", 4096, 1, 1), P("none", 2048, 2, 2),
        ), layers=8),
        Group("qwen2-0.5b", "nf4", 16, (P("full", 2048, 1, 1), P("none", 2048, 2, 2)), targets=("q_proj", "v_proj")),
        Group("qwen2-1.5b", "nf4", 16, (
            P("full", 16384, 1, 1), P("full", 2048, 1, 1), P("full", 2048, 4, 4), P("full", 4096, 2, 4),
            P("full", 8192, 1, 1), P("full", 512, 8, 2), P("none", 2048, 1, 4), P("none", 1024, 4, 2),
            P("offload", 4096, 1, 1), P("offload", 2048, 4, 4),
        )),
        Group("qwen2-1.5b", "bf16", 64, (P("full", 2048, 2, 4), P("none", 2048, 2, 2), P("none", 8192, 1, 1))),
        Group("llama-3-8b", "nf4", 16, (
            P("full", 2048, 1, 1), P("full", 2048, 4, 4), P("full", 8192, 1, 1), P("none", 1024, 2, 2),
            P("offload", 4096, 2, 2),
        ), layers=8),
        Group("qwen2-0.5b", "nf4", 16, (
            P("full", 512, 1, 1), P("full", 1024, 8, 2), P("none", 1024, 2, 2), P("none", 4096, 1, 1),
            P("offload", 2048, 2, 4), P("full", 2048, 1, 4, 2),
        )),
        Group("smollm2-360m", "nf4", 32, (P("full", 1024, 8, 4), P("none", 512, 4, 2), P("none", 2048, 2, 1))),
        Group("qwen2-0.5b", "bf16", 8, (P("none", 512, 8, 1), P("full", 8192, 2, 2))),
    ),
    # Held-out points (2026-11-29): architectures, sizes, ranks and lengths the default matrix never measured,
    # at full depth; the issue-14 points (Qwen2.5-3B none 4x1024 accumulation 2, Qwen2.5-3B offload 1x8192,
    # Mistral-7B offload 4x2048) and neighbours that change one factor at a time.
    "heldout": (
        Group("qwen2.5-3b", "nf4", 64, (
            P("none", 1024, 4, 1, 2), P("none", 1024, 4, 1, 1), P("offload", 8192, 1, 1), P("full", 2048, 2, 2),
            P("offload", 2048, 4, 1),
        )),
        Group("mistral-7b", "nf4", 16, (
            P("offload", 2048, 4, 1), P("full", 4096, 1, 2, 2), P("none", 1024, 2, 1), P("offload", 8192, 2, 4),
        )),
        Group("smollm2-1.7b", "nf4", 16, (
            P("none", 2048, 2, 2), P("full", 4096, 1, 1, 2), P("offload", 8192, 1, 2), P("full", 512, 8, 1),
        )),
        Group("smollm2-135m", "nf4", 16, (P("none", 2048, 4, 2), P("full", 1024, 8, 1, 2), P("offload", 4096, 2, 2))),
        Group("gemma-2-2b", "nf4", 16, (P("full", 2048, 1, 1), P("none", 1024, 2, 2))),
        Group("phi-3-mini", "nf4", 16, (P("full", 2048, 2, 2), P("offload", 4096, 1, 1))),
    ),
    "heldout2": (
        Group("llama-3-8b", "nf4", 32, (
            P("offload", 8192, 1, 1), P("full", 2048, 4, 2, 2), P("none", 1024, 4, 1), P("offload", 4096, 4, 2),
        )),
        Group("qwen2.5-7b", "nf4", 16, (P("offload", 4096, 2, 2), P("none", 2048, 1, 1, 2), P("full", 8192, 1, 1))),
        Group("gemma-2-2b", "nf4", 16, (P("offload", 4096, 1, 1), P("full", 1024, 4, 2, 2), P("none", 512, 4, 1))),
    ),
    # Fit points in the regime of the largest held-out offload jobs (2026-11-29, round 2): big layer inputs on a
    # GPU-bound forward, from architectures the fit already has (Llama-3-8B at 16 layers, a depth no other point
    # has; Qwen2.5-3B at 16K tokens per micro-batch). The held-out full-depth points stay unseen.
    "fitoffload": (
        Group("llama-3-8b", "nf4", 16, (
            P("offload", 4096, 4, 2), P("offload", 2048, 4, 1), P("offload", 8192, 1, 1),
        ), layers=16),
        Group("qwen2.5-3b", "nf4", 16, (P("offload", 4096, 4, 2),)),
    ),
    # Layers replayed as CUDA graphs (training.cuda_graphs) in every mode, beside eager twins measured in the same run
    # (they pin the run's host factor, and give the eager-to-graphed step on one machine); about 110 s on an H200.
    # Qwen2-1.5B is host-bound eagerly (its graphed steps ran 10-23 % slower than predicted, docs/BENCHMARKS.md
    # round 14); Llama-3-8B at 8 layers is GPU-bound, with the largest static buffers.
    "graphs": (
        Group("qwen2-1.5b", "nf4", 16, (
            G("none", 2048, 4, 1), P("none", 2048, 4, 1), G("full", 2048, 4, 4), G("offload", 2048, 4, 4),
            P("offload", 2048, 4, 4), G("offload", 2048, 1, 1, 4),
        )),
        Group("llama-3-8b", "nf4", 16, (G("none", 2048, 2, 2), P("none", 2048, 2, 2), G("offload", 2048, 4, 2)),
              layers=8),
    ),
    "smoke": (
        Group("tiny-qwen2", "bf16", 8, (
            P("none", 128, 2, 2), P("full", 256, 1, 1), P("full", 128, 2, 2, 2), G("none", 128, 2, 2),
        )),
        Group("tiny-llama", "nf4", 16, (P("none", 256, 1, 1),), targets=("q_proj", "v_proj")),
    ),
}


def versions() -> str:
    names = ("torch", "transformers", "peft", "bitsandbytes")
    found = []
    for name in names:
        try:
            found.append(f"{name}={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    found.append(f"alloc={os.environ.get('PYTORCH_CUDA_ALLOC_CONF') or 'default'}")
    return " ".join(found)


def build_model_dir(arch: Architecture, target: Path, device: str) -> None:
    """Write config.json, random bf16 weights and a small tokenizer, as a Hugging Face model directory."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    settings = arch.hf_config()
    model_type = settings.pop("model_type")
    config = AutoConfig.for_model(model_type, **settings)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(target)
    del model
    vocab = {"<unk>": 0, "<|endoftext|>": 1, "<|im_end|>": 2}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>").save_pretrained(
        target
    )


def synthetic_samples(point: Point, vocab: int, rows: int, seed: int):
    """`samples_per_row` samples per row of `seq_len` tokens, whose second half carries loss. One a row fills it (so a
    micro-batch's samples have one length and attend in one batched call); several have lengths 1/8 above and below
    the mean in turn, as packed data of unequal samples, which attends through varlen flash attention
    (train_core/fast/attention.py). Packing them in the Trainer's shuffled order fills most rows."""
    import random

    from train_core.data.tokenize import TokenizedSample

    generator = random.Random(seed)
    mean = point.seq_len // point.samples_per_row
    spread = mean // 8 if point.samples_per_row > 1 else 0
    samples = []
    for number in range(rows * point.samples_per_row):
        length = mean + (spread if number % 2 else -spread)
        ids = [generator.randrange(3, vocab) for _ in range(length)]
        trainable = [position >= length // 2 for position in range(length)]
        samples.append(TokenizedSample(ids, trainable))
    return samples


class Bench:
    """One loaded model (train_core engine + optimizer) driven through the Trainer's optimizer step."""

    def __init__(
        self, group: Group, arch: Architecture, model_dir: Path, work: Path, device: str, engine: str
    ) -> None:
        from runspec.config import TrainConfig
        from train_core.device import choose_device_path
        from train_core.engine import build_engine
        from train_core.models.loading import load_tokenizer
        from train_core.trainer import Trainer

        self.device = device
        self.arch = arch
        self.config = TrainConfig.model_validate({
            "model": {"name": str(model_dir), "quantization": group.quantization, "engine": engine},
            "data": {"train": str(work / "unused.jsonl"), "max_seq_length": 16384},
            "lora": {"r": group.rank, "alpha": 2 * group.rank,
                     "target_modules": list(group.targets) if group.targets else "all-linear"},
            "training": {"batch_size": 1, "micro_batch_size": 1, "learning_rate": 1e-5,
                         "activation_checkpointing": "full" if device == "cuda" else "none"},
            "output_dir": str(work / "run"),
        })
        self.trainer = Trainer(self.config, work_dir=work / "run", log=lambda message: None)
        trainer = self.trainer
        trainer.path = choose_device_path(self.config, force_cpu=device == "cpu")
        trainer.engine = build_engine(self.config, trainer.path)
        trainer.tokenizer = load_tokenizer(str(model_dir))
        trainer.engine.train()
        trainer.trainable = trainer.engine.trainable_parameters()
        trainer.total_steps = 10**6
        trainer.setup_optimizer()
        self.engine_name = ENGINE_NAMES.get(type(trainer.engine).__name__, type(trainer.engine).__name__)
        self.lora_params = sum(parameter.numel() for parameter in trainer.trainable)
        self.weights_gib = self._allocated_gib()

    def _allocated_gib(self) -> float:
        if self.device != "cuda":
            return 0.0
        import torch

        torch.cuda.synchronize()
        return torch.cuda.memory_allocated() / 2**30

    def input_embedding_placement(self) -> str:
        """"host" or "gpu": where the loaded engine keeps the input embedding now (a calibration.csv column)."""
        embed = getattr(self.trainer.engine.model, "embed", None)
        return "host" if embed is not None and embed.device.type == "cpu" else "gpu"

    def set_checkpointing(self, mode: str) -> None:
        """Switch the loaded engine's activation checkpointing without reloading the model."""
        engine = self.trainer.engine
        self.trainer.path = dataclasses.replace(self.trainer.path, activation_checkpointing=mode)
        if self.engine_name == "train_core-fast":
            from runspec.fast_support import input_embedding_on_host
            from train_core.fast.recompute import Recompute

            engine.recompute = Recompute(mode, engine.device)
            model = engine.model
            if model.head is not model.embed:  # where the engine would have loaded it for this mode
                model.embed = model.embed.to("cpu" if input_embedding_on_host(mode, tied=False) else engine.device)
            return
        if mode == "none":
            engine.model.gradient_checkpointing_disable()
        else:
            engine.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        engine.path = self.trainer.path

    def set_graphs(self, point: Point) -> None:
        """Drop the loaded engine's CUDA graphs and, when the point asks for them and the engine can capture, build
        new ones for the point's checkpointing (set first) and micro-batch bounds, as train_core.fast.engine's
        build_fast_engine does for a job of max_seq_length = seq_len; they capture at the first micro-batch."""
        engine = self.trainer.engine
        if self.engine_name != "train_core-fast":
            return
        from train_core.fast.graphs import graphs_unsupported

        if engine.graphs is not None:
            engine.graphs.release()
            engine.graphs = None
        if point.cuda_graphs and graphs_unsupported(engine.model.spec, engine.device) is None:
            engine.graphs = engine.build_graphs(engine.mlp_tile_rows, (point.micro_batch * point.seq_len, point.seq_len))
        self.trainer.path = dataclasses.replace(self.trainer.path, cuda_graphs=engine.graphs is not None)

    def graphs_replayed(self) -> bool:
        """Whether the last point's micro-batches replayed as CUDA graphs (a calibration.csv column)."""
        graphs = getattr(self.trainer.engine, "graphs", None)
        return graphs is not None and graphs.replayed > 0

    def measure(self, point: Point, warmup: int, timed: int) -> dict:
        """Steady-state peak memory (after the first step) and the median of `timed` step times."""
        import torch

        from train_core.checkpoint import TrainerState
        from train_core.data.batching import BatchPlan

        trainer = self.trainer
        self.set_checkpointing(point.checkpointing)
        self.set_graphs(point)
        steps = warmup + timed
        batch = point.micro_batch * point.grad_accum
        samples = synthetic_samples(point, self.arch.vocab, batch * steps, seed=point.seq_len)
        trainer.plan = BatchPlan(samples, 0, batch, point.seq_len, packing=True)
        trainer.micro_batch = point.micro_batch
        state = TrainerState(step=0, epoch=0, cursor=0, tokens_seen=0, config_fingerprint="calibration", world_size=1)
        cuda = self.device == "cuda"
        if cuda:
            gc.collect()
            torch.cuda.empty_cache()
        times = []
        for step in range(steps):
            record = trainer._optimizer_step(state)
            if step == 0 and cuda:
                torch.cuda.reset_peak_memory_stats()
            if step >= warmup:
                times.append(record["step_seconds"])
        micros = [micro for step in range(steps) for micro in trainer.plan.micro_batches(
            trainer.plan.step_rows(0, step), point.micro_batch)]  # packed rows of unequal samples vary in tokens
        mixed = self.graphs_replayed() and trainer.engine.graphs.eager > 0  # neither a graphed nor an eager point
        result = {
            "tokens_per_micro_batch": round(statistics.mean(micro.input_ids.numel() for micro in micros)),
            "targets_per_micro_batch": round(statistics.mean(micro.num_targets for micro in micros)),
            "step_s": statistics.median(times), "step_s_min": min(times), "status": "partly-eager" if mixed else "ok",
            "peak_allocated_gib": "", "peak_reserved_gib": "", "context_gib": "",
        }
        if cuda:
            free, total = torch.cuda.mem_get_info()
            result.update(
                peak_allocated_gib=torch.cuda.max_memory_allocated() / 2**30,
                peak_reserved_gib=torch.cuda.max_memory_reserved() / 2**30,
                context_gib=((total - free) - torch.cuda.memory_reserved()) / 2**30,
                allocator=allocator_stats(),
            )
        return result

    def checkpoint_cost(self) -> tuple[float, float]:
        """(MB, seconds) of one committed checkpoint written by the Trainer to local disk."""
        from train_core.checkpoint import TrainerState

        trainer = self.trainer
        state = TrainerState(step=1, epoch=0, cursor=0, tokens_seen=0, config_fingerprint="calibration", world_size=1)
        started = time.perf_counter()
        trainer._save(state)
        seconds = time.perf_counter() - started
        stored = Path(self.config.output_dir) / "checkpoints"
        size = sum(path.stat().st_size for path in stored.rglob("*") if path.is_file())
        shutil.rmtree(stored, ignore_errors=True)
        return size / 2**20, seconds

    def close(self) -> None:
        for name in ("engine", "optimizer", "scheduler", "flat", "trainable", "plan"):
            if hasattr(self.trainer, name):
                delattr(self.trainer, name)
        gc.collect()
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()


def allocator_stats() -> dict[str, float]:
    """Peaks of the caching allocator's pools and its split/inactive blocks (GiB; counts as they are): where
    reserved memory goes beyond allocated."""
    import torch

    stats = torch.cuda.memory_stats()
    wanted = (
        "reserved_bytes.large_pool.peak", "reserved_bytes.small_pool.peak", "inactive_split_bytes.all.peak",
        "inactive_split_bytes.large_pool.peak", "allocated_bytes.large_pool.peak", "active_bytes.all.peak",
        "requested_bytes.all.peak", "segment.all.peak", "segment.large_pool.peak", "num_alloc_retries",
        "num_device_alloc", "reserved_bytes.all.current", "allocated_bytes.all.current",
    )
    return {key: stats[key] / 2**30 if "bytes" in key else stats[key] for key in wanted if key in stats}


def _arch(group: Group) -> Architecture:
    arch = resolve_architecture(group.arch)
    return arch.with_layers(group.layers or arch.layers)


def upgrade_header(path: Path) -> None:
    """Give a CSV written by an older bench (its columns a prefix of COLUMNS) today's header line; its rows stay as
    they are and read the newer columns as empty."""
    with open(path, encoding="utf-8", newline="") as handle:
        lines = handle.readlines() or ["\r\n"]
    header = next(csv.reader(lines[:1]), [])
    if header == COLUMNS:
        return
    if header != COLUMNS[: len(header)]:
        raise SystemExit(f"{path}: its header is not this bench's columns (or an older prefix of them); "
                         "write to another --out")
    ending = lines[0][len(lines[0].rstrip("\r\n")):]
    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(",".join(COLUMNS) + ending + "".join(lines[1:]))


def write_row(path: Path, row: dict) -> None:
    new = not path.is_file()
    with open(path, "a", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow({key: (f"{value:.4f}" if isinstance(value, float) else value) for key, value in row.items()})


def measure_group(group: Group, bench: Bench, context: dict, args: argparse.Namespace, started: float) -> None:
    """Measure the group's points until the deadline, appending one CSV row per point."""
    import torch

    checkpoint: tuple[float, float] | None = None
    for point in group.points:
        if time.monotonic() - started > args.deadline:
            print("deadline reached; stopping this group", flush=True)
            return
        row = {
            **context, "engine": bench.engine_name, "arch": group.arch, "layers": bench.arch.layers,
            "quantization": bench.trainer.path.quantization, "lora_rank": group.rank,
            "lora_targets": "+".join(group.targets or ("all-linear",)), "checkpointing": point.checkpointing,
            "seq_len": point.seq_len, "micro_batch": point.micro_batch, "grad_accum": point.grad_accum,
            "samples_per_row": point.samples_per_row, "weights_gib": bench.weights_gib,
            "lora_params": bench.lora_params, "timed_steps": args.timed, "split": args.split,
        }
        try:
            result = bench.measure(point, args.warmup, args.timed)
        except torch.cuda.OutOfMemoryError:
            bench.trainer.flat.drop_grads()
            gc.collect()
            torch.cuda.empty_cache()
            result = {"status": "oom"}
        if checkpoint is None and result["status"] == "ok":
            checkpoint = bench.checkpoint_cost()  # after a step, so the optimizer state is in it
        if checkpoint is not None:
            row.update(checkpoint_mb=checkpoint[0], checkpoint_s=checkpoint[1])
        row["input_embedding"] = bench.input_embedding_placement()  # measure() set the point's mode
        row["cuda_graphs"] = bench.graphs_replayed()
        row["equal_lengths"] = point.samples_per_row == 1  # synthetic_samples' rule
        allocator = result.pop("allocator", None)
        write_row(Path(args.out), {**row, **result})
        if args.stats_out:
            with open(args.stats_out, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({**row, **result, "allocator": allocator}, default=str) + "\n")
        shown = {key: result.get(key) for key in ("status", "peak_reserved_gib", "step_s")}
        graphs = getattr(bench.trainer.engine, "graphs", None)  # its replay and capture counts, for the log
        print(f"   {point}: {json.dumps(shown, default=lambda v: round(v, 3))}"
              + (f"; {graphs.describe()}" if graphs is not None else ""), flush=True)


def run(args: argparse.Namespace) -> int:
    import warnings

    import torch

    from train_core.cuda_setup import prefer_expandable_segments

    warnings.filterwarnings("ignore", category=FutureWarning)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU here; use --device cpu for a dry run", file=sys.stderr)
        return 2
    # As the Trainer does before it loads a model (the engine of the first group would otherwise load it with the
    # default allocator), and before versions() records the allocator.
    prefer_expandable_segments()
    started = time.monotonic()
    now = datetime.datetime.now(datetime.timezone.utc)
    context = {
        "run": now.strftime("%Y-%m-%dT%H:%MZ"), "date": now.date().isoformat(), "versions": versions(),
        "card": torch.cuda.get_device_name() if device == "cuda" else "cpu",
    }
    if Path(args.out).is_file():
        upgrade_header(Path(args.out))  # before any GPU time is spent: a foreign CSV is refused here
    work = Path(tempfile.mkdtemp(prefix="spottune-calib-"))
    built: dict[str, Path] = {}
    uses = Counter(_arch(group).name for group in MATRIX[args.matrix])
    print(f"{context['card']}; {context['versions']}; writing {args.out}", flush=True)
    try:
        for group in MATRIX[args.matrix]:
            arch = _arch(group)
            if time.monotonic() - started > args.deadline:
                print(f"deadline reached; skipping {arch.name} {group.quantization}", flush=True)
                continue
            if arch.name not in built:
                built[arch.name] = work / arch.name.replace("[", "_").replace("]", "")
                build_model_dir(arch, built[arch.name], device)
            setup = time.monotonic()
            bench = Bench(group, arch, built[arch.name], work, device, args.engine)
            print(f"== {arch.name} {group.quantization} r{group.rank}: loaded in {time.monotonic() - setup:.1f}s, "
                  f"{bench.weights_gib:.2f} GiB, {bench.lora_params:,} LoRA params ({bench.engine_name})", flush=True)
            measure_group(group, bench, context, args, started)
            bench.close()
            uses[arch.name] -= 1
            if not uses[arch.name]:
                shutil.rmtree(built.pop(arch.name), ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"done in {time.monotonic() - started:.0f}s", flush=True)
    print_table(Path(args.out), context["run"])
    return 0


def print_table(path: Path, run_id: str) -> None:
    """The rows this run wrote, one compact line each."""
    if not path.is_file():
        return
    with open(path, encoding="utf-8", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["run"] == run_id]
    print("arch engine mode seq x mb x acc spr | status alloc reserved step_s")
    for r in rows:
        mode = r["checkpointing"] + ("+graphs" if r["cuda_graphs"] == "True" else "")
        print(f"{r['arch']} {r['engine']} {mode} {r['seq_len']}x{r['micro_batch']}x{r['grad_accum']} "
              f"{r['samples_per_row']} | {r['status']} {r['peak_allocated_gib']} {r['peak_reserved_gib']} "
              f"{r['step_s']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="cost_models/data/calibration.csv", help="CSV to append rows to")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: a dry run of the script")
    parser.add_argument("--matrix", choices=sorted(MATRIX), default="default")
    parser.add_argument("--engine", choices=("auto", "hf", "fast"), default="auto", help="train_core model.engine")
    parser.add_argument("--deadline", type=float, default=200.0, help="start no new point after this many seconds")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per point (peak counts from step 2)")
    parser.add_argument("--timed", type=int, default=3, help="timed steps per point (the median is recorded)")
    parser.add_argument("--split", choices=("fit", "heldout"), default="fit",
                        help="fit: cost_models.fit uses the rows; heldout: only scored against the fit")
    parser.add_argument("--stats-out", default="", help="JSONL: each row with the allocator's pool statistics")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
