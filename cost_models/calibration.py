"""Calibration data: measured points (calibration.csv) and the coefficients fitted to them (calibration_fit.json).

`python bench/calibrate_estimator.py` measures on a GPU; `python -m cost_models.fit` refits the JSON.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from pathlib import Path

from cost_models.architectures import resolve_architecture
from cost_models.catalog import Gpu, gpu_for_device
from cost_models.errors import EstimateError
from cost_models.fast_engine import dequant_buffer_elements
from cost_models.shape import FAST_ENGINE, HF_ENGINE, JobShape, RowStats

DATA = Path(__file__).with_name("data")
MEASUREMENTS = DATA / "calibration.csv"
FIT = DATA / "calibration_fit.json"
LEGACY_ENGINE_NAMES = {"train_core transformers + PEFT": HF_ENGINE}  # how run 1 and 2 named the engine


@dataclass(frozen=True)
class MemoryCoefficients:
    """Scales of memory.memory_features (bytes per counted byte), plus the CUDA context in GiB. None = the
    engine has no such feature (the fast engine: no bf16 base, no dense mask)."""

    saved: float
    logits: float
    working: float
    one: float
    cuda_context_gib: float
    saved_float_base: float | None = None
    mask_per_layer: float | None = None
    working_float_base: float | None = None
    offload_pending: float | None = None  # fast engine: offloaded layer inputs whose blocks wait on the copy stream
    graph_pool: float | None = None  # fast engine: bytes of the private pool its checkpointed CUDA graphs allocate in
    margin: float = 0.0  # relative allowance above the point for the upper bound (worst fitted under-prediction)


@dataclass(frozen=True)
class TimeCoefficients:
    """Host (Python/launch) seconds, GPU efficiencies against the datasheet peak, and how the two overlap.
    None = the engine never does that work (the fast engine: no bf16 base, no dense mask)."""

    host_layer_pass_4bit: float  # seconds per decoder layer per pass, 4-bit base
    host_per_target: float  # extra seconds per layer pass per LoRA target module
    host_loss_chunk: float  # seconds per loss chunk per pass (the chunk loop runs in Python)
    host_per_token: float  # seconds per token of a micro-batch (collation in Python)
    host_micro_batch: float
    host_lora_tensor: float  # optimizer + clipping seconds per LoRA tensor per step
    gemm_efficiency: float
    causal_attention_efficiency: float  # one causal SDPA call (the fast engine: samples of one length, batched)
    elementwise_traffic: float  # bytes moved per saved activation byte
    overlap: float  # p of the p-norm that combines host and GPU time (large = perfect overlap)
    offload_gbs: float  # host <-> device copy rate for offloaded activations
    host_layer_pass_float: float | None = None  # seconds per decoder layer per pass with a bf16/fp32 base
    masked_attention_efficiency: float | None = None  # attention under a dense mask
    varlen_attention_efficiency: float | None = None  # fast engine: varlen flash attention (samples of unequal lengths)
    host_factors: dict[str, float] = field(default_factory=dict)  # per calibration run (machine); 1 = reference
    margin: float = 0.0  # relative half-width of the step-time interval at the measured points (worst fitted error)

    @cached_property
    def host_factor(self) -> float:
        """The host speed a plan assumes: the mean over the measured machines."""
        return sum(self.host_factors.values()) / len(self.host_factors) if self.host_factors else 1.0


def _outside(value: float, low: float, high: float) -> float:
    """How far value lies outside [low, high], in factors of 4 (0 inside; 1 = four times past an edge)."""
    if value <= 0 or low <= 0:
        return 0.0
    return max(0.0, math.log(value / high), math.log(low / value)) / math.log(4)


@dataclass(frozen=True)
class Distance:
    """How far a job lies from the engine's measured points, per factor (0 = measured); `memory` leaves out the
    GPU (reserved memory is the same software on every card), `time` counts it."""

    architecture: float  # 0 the architecture was measured, 0.5 its family (model type) was, 1 neither
    size: float  # parameters outside the measured range, in factors of 4
    tokens: float  # tokens per micro-batch outside the measured range, in factors of 4
    micro_batch: float  # micro-batch outside the measured range, in factors of 4
    mode: float  # 1 when the engine was never measured with this checkpointing mode
    weights: float  # 1 for a weight format or compute dtype the engine was not measured with
    gpu: float  # 0 a measured card, 0.5 a transfer with a measured GEMM rate, 1 a transfer through datasheet rates

    @property
    def memory(self) -> float:
        return self.architecture + self.size + self.tokens + self.micro_batch + self.mode + self.weights

    @property
    def time(self) -> float:
        return self.memory + self.gpu

    @property
    def calibrated(self) -> bool:
        """Near enough to measured points that the fitted error bounds apply as they are."""
        return self.time < 1.0


@dataclass(frozen=True)
class Calibration:
    engine: str
    cards: tuple[str, ...]  # catalog GPU names with measured points
    memory: MemoryCoefficients
    time: TimeCoefficients
    tokens_range: tuple[float, float]
    params_range: tuple[float, float]
    quantizations: tuple[str, ...]
    measurements_sha256: str
    accuracy: dict
    architectures: tuple[str, ...] = ()  # measured architecture names (full depth or not)
    model_types: tuple[str, ...] = ()
    micro_batch_range: tuple[int, int] = (1, 1)
    modes: tuple[str, ...] = ()

    def distance(self, gpu: Gpu, shape: JobShape) -> Distance:
        arch = shape.arch
        if arch.name.split("[")[0] in self.architectures:
            family = 0.0
        else:
            family = 0.5 if arch.model_type in self.model_types else 1.0
        return Distance(
            architecture=family if shape.engine == self.engine else 1.0,
            size=_outside(arch.total_params, *self.params_range),
            tokens=_outside(shape.tokens_per_micro_batch, *self.tokens_range),
            micro_batch=_outside(shape.micro_batch, *self.micro_batch_range),
            mode=0.0 if shape.checkpointing in self.modes else 1.0,
            weights=0.0 if shape.quantization in self.quantizations and shape.compute_dtype == "bf16" else 1.0,
            gpu=0.0 if gpu.name in self.cards else 0.5 if gpu.measured_bf16_tflops else 1.0,
        )

    def covers(self, gpu: Gpu, shape: JobShape) -> bool:
        """True when measured points of this engine lie near this job on this GPU (see Distance)."""
        return self.distance(gpu, shape).calibrated


@dataclass(frozen=True)
class Measurement:
    """One row of calibration.csv as a job shape on a catalog GPU, with what was measured."""

    shape: JobShape
    gpu: Gpu
    run: str
    status: str
    peak_reserved_gib: float
    peak_allocated_gib: float
    step_s: float
    context_gib: float
    weights_gib: float  # allocated after loading the model (input embedding on the GPU) and adding the adapters
    checkpoint_mb: float | None
    checkpoint_s: float | None
    split: str = "fit"  # "heldout": scored against the fit, never fitted; "superseded": the engine has changed since
    held_buffers: tuple[int, int] = (0, 0)  # fast-engine dequantization buffer elements the process held at load

    @property
    def held_buffers_gib(self) -> float:
        """The bf16 dequantization buffers that earlier groups of the same bench process left allocated."""
        return 2 * sum(self.held_buffers) / 2**30

    @property
    def carried_gib(self) -> float:
        """What the peak holds beyond this job's own needs: held buffers larger than the job's own (the
        module-global buffers only grow, and the transformers + PEFT engine has none)."""
        own = dequant_buffer_elements(self.shape.arch) if self.shape.engine == FAST_ENGINE else (0, 0)
        return 2 * sum(max(held, mine) - mine for held, mine in zip(self.held_buffers, own)) / 2**30

    @property
    def job_reserved_gib(self) -> float:
        """Peak reserved memory of this job alone, as a training process running one model would see it."""
        return self.peak_reserved_gib - self.carried_gib


def _float(value: str) -> float | None:
    return float(value) if value not in ("", None) else None


def _flag(row: dict[str, str], column: str, absent: bool, source: str) -> bool:
    """A True/False column; empty or absent (rows from before the column) reads as `absent`."""
    value = row.get(column)
    if value not in ("True", "False", "", None):
        raise EstimateError(f"{source}: {column} is {value!r}; accepted: True, False or empty")
    return absent if value in ("", None) else value == "True"


def _row_stats(row: dict[str, str], source: str) -> RowStats:
    """The row's packing: its mean tokens per row, and as many samples as hold them at the bench's mean sample length
    (seq_len / samples_per_row: rows of unequal samples are not all full)."""
    tokens, targets = int(row["tokens_per_micro_batch"]), int(row["targets_per_micro_batch"])
    seq_len, row_tokens = int(row["seq_len"]), tokens / int(row["micro_batch"])
    sample = seq_len // int(row["samples_per_row"])
    return RowStats(row_tokens, seq_len, row_tokens / sample, targets / tokens, 0, source)


def measurement_from_row(row: dict[str, str], source: str) -> Measurement:
    if None in row:
        raise EstimateError(f"{source}: more fields than the header names; the rows were appended under an older "
                            "header (copy the bench CSV's header line over it)")
    card = gpu_for_device(row["card"])
    if card is None:
        raise EstimateError(f"{source}: card {row['card']!r} is not in cost_models/data/gpus.csv device_names")
    arch = resolve_architecture(row["arch"]).with_layers(int(row["layers"]))
    targets_field = row["lora_targets"]
    shape = JobShape(
        arch=arch, quantization=row["quantization"], lora_rank=int(row["lora_rank"]),
        lora_targets=arch.module_names if targets_field == "all-linear" else tuple(targets_field.split("+")),
        seq_len=int(row["seq_len"]), micro_batch=int(row["micro_batch"]), grad_accum=int(row["grad_accum"]),
        checkpointing=row["checkpointing"], rows=_row_stats(row, source),
        engine=LEGACY_ENGINE_NAMES.get(row["engine"], row["engine"]),
        embedding_measured_on_gpu=(row.get("input_embedding") or "gpu") == "gpu",
        cuda_graphs=_flag(row, "cuda_graphs", False, source),  # rows from before it ran eagerly
        measured_equal_lengths=_flag(row, "equal_lengths", True, source),  # rows from before it packed equal samples
    )
    return Measurement(
        shape=shape, gpu=card, run=row["run"], status=row["status"],
        peak_reserved_gib=_float(row["peak_reserved_gib"]) or 0.0,
        peak_allocated_gib=_float(row["peak_allocated_gib"]) or 0.0, step_s=_float(row["step_s"]) or 0.0,
        context_gib=_float(row["context_gib"]) or 0.0, weights_gib=_float(row["weights_gib"]) or 0.0,
        checkpoint_mb=_float(row.get("checkpoint_mb", "")),
        checkpoint_s=_float(row.get("checkpoint_s", "")), split=row.get("split") or "fit",
    )


def load_measurements(path: Path = MEASUREMENTS) -> list[Measurement]:
    """Every row, with the dequantization buffers its bench process held when the row's model was loaded.

    bench/calibrate_estimator.py measures its groups one after another in one process, appending rows in
    that order; the fast engine's buffers (train_core.fast.lora.BUFFERS) are module-global and grow to the
    largest weight group seen, so a group measured after a bigger fast-engine model carries that model's
    buffers. Replaying each run's rows in file order recovers them exactly.
    """
    with open(path, encoding="utf-8", newline="") as handle:
        rows = [measurement_from_row(row, f"{path}:{number}") for number, row in enumerate(csv.DictReader(handle), 2)]
    state: dict[str, tuple[tuple, tuple[int, int], tuple[int, int]]] = {}  # run: (group, held at load, held after)
    replayed = []
    for row in rows:
        s = row.shape
        group = (s.arch.name, s.engine, s.quantization, s.lora_rank, s.lora_targets, row.weights_gib)
        last, at_load, after = state.get(row.run, ((), (0, 0), (0, 0)))
        if group != last:  # a new model was loaded: it finds what the previous group left
            at_load = after
        own = dequant_buffer_elements(s.arch) if s.engine == FAST_ENGINE else (0, 0)
        state[row.run] = (group, at_load, (max(at_load[0], own[0]), max(at_load[1], own[1])))
        replayed.append(replace(row, held_buffers=at_load))
    return replayed


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def calibration_from_dict(raw: dict) -> Calibration:
    return Calibration(
        engine=raw["engine"], cards=tuple(raw["cards"]), memory=MemoryCoefficients(**raw["memory"]),
        time=TimeCoefficients(**raw["time"]), tokens_range=tuple(raw["tokens_range"]),
        params_range=tuple(raw["params_range"]), quantizations=tuple(raw["quantizations"]),
        measurements_sha256=raw["measurements_sha256"], accuracy=raw.get("accuracy", {}),
        architectures=tuple(raw.get("architectures", ())), model_types=tuple(raw.get("model_types", ())),
        micro_batch_range=tuple(raw.get("micro_batch_range", (1, 1))), modes=tuple(raw.get("modes", ())),
    )


@lru_cache(maxsize=4)
def load_calibrations(path: Path = FIT) -> dict[str, Calibration]:
    """Every engine's fitted calibration, by engine name."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise EstimateError(f"{path}: cannot read the fitted calibration ({error}); run python -m cost_models.fit")
    return {engine: calibration_from_dict(entry) for engine, entry in raw["engines"].items()}


def load_calibration(engine: str = HF_ENGINE, path: Path = FIT) -> Calibration:
    """The engine's fitted calibration (every engine in shape.ENGINES has its own)."""
    calibrations = load_calibrations(path)
    if engine not in calibrations:
        raise EstimateError(f"{path}: no fitted calibration for engine {engine!r} (fitted: "
                            f"{', '.join(sorted(calibrations))}); measure it with bench/calibrate_estimator.py on a "
                            "GPU, then run python -m cost_models.fit")
    return calibrations[engine]
