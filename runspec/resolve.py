"""resolve(): what a TrainConfig's `auto` settings become on one device — base-weight format, compute dtype,
optimizer, engine (fast or hf), micro-batch and activation checkpointing — and run_steps(): how many optimizer
steps it takes. The planner prices and train_core runs what these decide; neither re-derives them.

Layering. runspec imports neither cost_models nor train_core (cost_models imports runspec). Two facts come from
outside, as parameters:
- the sizer: micro-batch and checkpointing for `auto` on CUDA are the fastest choice that fits the GPU by
  cost_models' memory and step-time models. resolve() asks a `Sizer` for them; cost_models.sizing.MemoryModelSizer
  is the one the planner and train_core both use. On CPU no sizer is asked: the micro-batch is the largest divisor
  of a worker's rows within CPU_MICRO_BATCH_TOKENS, and checkpointing is `none`.
- the base model's facts (model type, what of its config the fast engine cannot run), asked only when the run's own
  settings allow the fast engine: train_core reads them with transformers, the planner from config.json or the
  built-in architecture table.
Whether bitsandbytes trains 4-bit layers on this CPU is probed by train_core (it needs torch) and passed in the
Device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Literal, Protocol, Sequence

from runspec.errors import ConfigError
from runspec.fast_support import ModelFacts, graphs_off_reason, run_unsupported

if TYPE_CHECKING:
    from runspec.config import TrainConfig

CPU_MICRO_BATCH_TOKENS = 4096


@dataclass(frozen=True)
class Device:
    """Where a run trains: the CPU, or one CUDA GPU per worker (a catalog GPU by name, else by its memory)."""

    kind: Literal["cpu", "cuda"]
    gpu: str | None = None  # catalog GPU name; None = not in the catalog (or not known yet, as when planning)
    memory_gib: float | None = None  # total device memory as the driver reports it
    workers: int = 1  # data-parallel workers sharing training.batch_size
    cpu_nf4: bool = False  # bitsandbytes' CPU backend trains 4-bit layers here
    cpu_nf4_note: str = ""  # what the CPU probe found

    def describe(self) -> str:
        if self.kind == "cpu":
            return "cpu"
        return f"cuda {self.gpu or 'GPU'}" + (f" ({self.memory_gib:.0f} GiB)" if self.memory_gib else "")


@dataclass(frozen=True)
class Run:
    """A run as it will train: every `auto` decided (micro_batch and checkpointing are None until sized)."""

    device: Literal["cpu", "cuda"]
    quantization: str  # nf4 | bf16 | fp32
    compute_dtype: str  # bf16 | fp32
    optimizer: str  # adamw | adamw_8bit
    engine: str  # fast | hf
    engine_note: str | None  # why not the fast engine (None when it runs)
    micro_batch: int | None
    checkpointing: str | None  # none | full | offload
    reason: str  # why this device path
    cuda_graphs: bool = False  # decoder layers replayed as CUDA graphs (on CUDA, with any checkpointing)
    graphs_note: str | None = None  # why not, when training.cuda_graphs asks for them
    merged_weights_kept: bool = False  # training.keep_merged_weights, where the fast engine runs


class Sizer(Protocol):
    def __call__(self, config: "TrainConfig", run: Run, device: Device) -> tuple[int, str]:
        """(micro_batch, checkpointing) for `run` on a CUDA `device`; the run's non-None values are kept."""


def rows_per_worker(config: "TrainConfig", workers: int) -> int:
    return max(1, config.training.batch_size // workers)


def lora_targets(config: "TrainConfig") -> tuple[str, ...] | None:
    """The configured LoRA target modules; None = every linear of the decoder layers."""
    targets = config.lora.target_modules
    return None if targets == "all-linear" else tuple(targets)


def _dtype_settings(config: "TrainConfig", device: Device) -> tuple[str, str, str, str | None, str]:
    """(quantization, compute dtype, optimizer, checkpointing or None for auto, reason) on this device."""
    model, training = config.model, config.training
    checkpointing = None if training.activation_checkpointing == "auto" else training.activation_checkpointing
    if device.kind == "cuda":
        quantization = "nf4" if model.quantization == "auto" else model.quantization
        compute = "fp32" if model.compute_dtype == "fp32" else "bf16"
        optimizer = "adamw_8bit" if training.optimizer == "auto" else training.optimizer
        return quantization, compute, optimizer, checkpointing, "CUDA GPU found"
    if training.optimizer == "adamw_8bit":
        raise ConfigError("training.optimizer: adamw_8bit needs a CUDA GPU; accepted on CPU: auto, adamw")
    quantization = model.quantization
    reason = "no CUDA GPU"
    if quantization in ("auto", "nf4"):
        if device.cpu_nf4:
            quantization, reason = "nf4", f"no CUDA GPU; {device.cpu_nf4_note}"
        elif model.quantization == "nf4":
            raise ConfigError(f"model.quantization: nf4 on CPU is not possible here: {device.cpu_nf4_note}; "
                              "accepted: auto, bf16, fp32")
        else:
            quantization, reason = "fp32", f"no CUDA GPU; {device.cpu_nf4_note}, so fp32 weights"
    compute = "bf16" if model.compute_dtype == "bf16" else "fp32"
    if checkpointing == "offload":
        raise ConfigError("training.activation_checkpointing: offload needs a CUDA GPU; accepted on CPU: auto, none, full")
    return quantization, compute, "adamw", checkpointing or "none", reason


def settle(config: "TrainConfig", device: Device, model: Callable[[], ModelFacts]) -> Run:
    """Everything but the sizing: weight format, dtype, optimizer, engine (a forced fast engine that cannot run
    is a ConfigError); micro_batch and checkpointing stay None where the config says auto."""
    quantization, compute, optimizer, checkpointing, reason = _dtype_settings(config, device)
    note = None
    if config.model.engine != "hf":
        note = run_unsupported(device.kind, quantization, compute, config.lora.dropout, lora_targets(config), model)
        if note is not None and config.model.engine == "fast":
            raise ConfigError(f"model.engine: fast is not possible for this run ({note}); accepted: auto, hf")
    engine = "hf" if config.model.engine == "hf" or note is not None else "fast"
    micro_batch = config.training.micro_batch_size
    return Run(device.kind, quantization, compute, optimizer, engine, note,
               micro_batch if isinstance(micro_batch, int) else None, checkpointing, reason,
               merged_weights_kept=config.training.keep_merged_weights and engine == "fast")


def cpu_micro_batch(config: "TrainConfig", workers: int) -> int:
    """The largest divisor of a worker's rows whose sequences fit CPU_MICRO_BATCH_TOKENS (at least 1)."""
    per_worker = rows_per_worker(config, workers)
    budget = max(1, CPU_MICRO_BATCH_TOKENS // config.data.max_seq_length)
    return max(size for size in range(1, per_worker + 1) if per_worker % size == 0 and size <= budget)


def resolve(
    config: "TrainConfig", device: Device, model: Callable[[], ModelFacts], sizer: Sizer | None = None
) -> Run:
    """The run this config trains on this device, every `auto` decided; on CUDA `sizer` sizes what is auto."""
    run = settle(config, device, model)
    if device.kind == "cpu":
        note = "needs a CUDA GPU" if config.training.cuda_graphs else None
        return replace(run, micro_batch=run.micro_batch or cpu_micro_batch(config, device.workers), graphs_note=note)
    if run.micro_batch is None or run.checkpointing is None:
        if sizer is None:
            raise ValueError("resolve: sizing auto micro-batch or checkpointing on CUDA needs a sizer")
        micro_batch, checkpointing = sizer(config, run, device)
        run = replace(run, micro_batch=micro_batch, checkpointing=checkpointing)
    if not config.training.cuda_graphs:
        return run
    note = graphs_off_reason(run.engine == "fast", model().model_type)
    return replace(run, cuda_graphs=note is None, graphs_note=note)


def run_steps(rows_per_epoch: Sequence[int], batch_size: int, max_steps: int | None) -> int:
    """Optimizer steps over epochs of these many sequences (packed rows), capped by max_steps; when the rows are
    unknown (no epochs, or empty ones), max_steps alone (0 without it)."""
    total = sum(math.ceil(rows / batch_size) for rows in rows_per_epoch)
    if not total:
        return max_steps or 0
    return min(total, max_steps) if max_steps else total
