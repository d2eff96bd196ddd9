"""A TrainConfig in the estimators' terms, and runspec's Sizer: the micro-batch and activation checkpointing that
`auto` becomes on a GPU, as the planner sizes a trial on an offer. train_core sizes through the same object, so a
run trains with what the plan priced. Takes the config by its fields (no pydantic or train_core import)."""
from __future__ import annotations

import glob
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from cost_models.architectures import Architecture, from_config, resolve_architecture
from cost_models.autosize import autosize
from cost_models.calibration import Calibration, load_calibration
from cost_models.catalog import Gpu, gpu, gpus
from cost_models.errors import EstimateError
from cost_models.shape import FAST_ENGINE, HF_ENGINE, JobShape, RowStats
from cost_models.tokens import dataset_row_stats
from runspec.errors import ConfigError
from runspec.fast_support import ModelFacts
from runspec.resolve import Device, Run, lora_targets, rows_per_worker

if TYPE_CHECKING:
    from runspec.config import TrainConfig

ENGINE_PROFILES = {"fast": FAST_ENGINE, "hf": HF_ENGINE}


@dataclass(frozen=True)
class SizingJob:
    """A config as the estimators see it before sizing: its shape, and what sizing may change (None = auto)."""

    shape: JobShape
    rows_per_worker: int
    micro_batch: int | None
    checkpointing: str | None


def model_dir(name: str, cache: Path | None) -> Path | None:
    """A local directory holding the model's tokenizer, if there is one (no download, no conversion)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if cache is None:
        return None
    if name == "builtin:smollm2-135m-instruct":
        found = sorted(glob.glob(str(cache / "gguf" / "SmolLM2-135M-Instruct*")))
        return Path(found[-1]) if found else None
    if name.startswith("builtin:"):
        candidate = cache / "builtin" / name.removeprefix("builtin:")
        return candidate if candidate.is_dir() else None
    return None


def architecture(config: "TrainConfig", cache: Path | None) -> Architecture:
    return resolve_architecture(config.model.name, cache)


def model_facts(arch: Architecture) -> ModelFacts:
    return ModelFacts(arch.model_type, arch.fast_unsupported)


def row_stats(config: "TrainConfig", cache: Path | None) -> RowStats:
    """Rows of the config's JSONL data set; full rows when it is not a JSONL file readable here (Parquet, a saved
    dataset or a Hub id would need `datasets`, which the planner does not import) or its columns are remapped."""
    data = config.data
    if not Path(data.train).is_file() or Path(data.train).suffix != ".jsonl" or data.columns:
        return RowStats.full_rows(data.max_seq_length)
    return dataset_row_stats(data.train, model_dir(config.model.name, cache), data.max_seq_length, data.packing,
                             data.train_on, data.chat_template, data.system_prompt, cache, data.format,
                             config.training.seed)


def sizing_job(config: "TrainConfig", run: Run, arch: Architecture, rows: RowStats, workers: int) -> SizingJob:
    """The estimators' JobShape of a settled run (micro-batch 1 and full checkpointing stand in for auto)."""
    per_worker = rows_per_worker(config, workers)
    targets = lora_targets(config) or arch.module_names
    micro_batch = run.micro_batch or 1
    shape = JobShape(
        arch=arch, quantization=run.quantization, lora_rank=config.lora.r, lora_targets=targets,
        seq_len=config.data.max_seq_length, micro_batch=micro_batch,
        grad_accum=max(1, per_worker // micro_batch), checkpointing=run.checkpointing or "full", rows=rows,
        optimizer=run.optimizer, engine=ENGINE_PROFILES[run.engine], gpus=workers, compute_dtype=run.compute_dtype,
        cuda_graphs=config.training.cuda_graphs, keep_merged_weights=config.training.keep_merged_weights,
    )
    return SizingJob(shape, per_worker, run.micro_batch, run.checkpointing)


def device_gpu(device: Device) -> Gpu:
    """The catalog GPU of a CUDA device; a card not in the catalog is sized by its own memory, with the speeds of
    the catalog card nearest in memory (speeds only rank the fitting choices)."""
    if device.gpu is not None:
        return gpu(device.gpu, "device")
    if device.memory_gib is None:
        raise EstimateError("device: a GPU outside the catalog needs its memory size to be sized")
    nearest = min(gpus().values(), key=lambda card: (abs(card.memory_gib - device.memory_gib), card.name))
    return replace(nearest, name=f"{device.memory_gib:.0f} GiB GPU", memory_gib=device.memory_gib,
                   device_names=(), source=f"memory as reported; speeds of {nearest.name}")


class MemoryModelSizer:
    """runspec.resolve's Sizer: the fastest (micro-batch, checkpointing) that fits the device by the memory model."""

    def __init__(self, cache: Path | None = None, calibration: Calibration | None = None,
                 model_config: Callable[[], dict] | None = None) -> None:
        self.cache = cache
        self.calibration = calibration
        self.model_config = model_config  # reads config.json of a model the table cannot name (e.g. GGUF)

    def architecture(self, config: "TrainConfig") -> Architecture:
        try:
            return architecture(config, self.cache)
        except EstimateError:
            if self.model_config is None:
                raise
            return from_config(self.model_config(), config.model.name, f"{config.model.name} (config)")

    def __call__(self, config: "TrainConfig", run: Run, device: Device) -> tuple[int, str]:
        """The sized choice; a run the estimators cannot describe is a ConfigError asking for explicit values."""
        try:
            job = sizing_job(config, run, self.architecture(config), row_stats(config, self.cache), device.workers)
            calibration = self.calibration or load_calibration(job.shape.engine)
            sized = autosize(job.shape, device_gpu(device), job.rows_per_worker, job.micro_batch, job.checkpointing,
                             calibration)
        except EstimateError as error:
            raise ConfigError(f"training: auto micro_batch_size / activation_checkpointing cannot be sized on "
                              f"{device.describe()} ({error}); set both explicitly") from None
        return sized.shape.micro_batch, sized.shape.checkpointing
