"""JobShape: the plain description of one training job that every estimator takes (no train_core types)."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property

from cost_models.architectures import Architecture
from cost_models.errors import EstimateError
from runspec.fast_support import input_embedding_on_host, layers_graphed

QUANTIZATIONS = ("nf4", "nf4-nodq", "int8", "bf16", "fp32")
CHECKPOINTING = ("none", "full", "offload")
OPTIMIZERS = ("adamw", "adamw_8bit")
HF_ENGINE, FAST_ENGINE = "train_core-hf", "train_core-fast"  # train_core's transformers + PEFT and fused engines
ENGINES = (HF_ENGINE, FAST_ENGINE)
LOSS_CHUNK_ROWS = 1024  # train_core projects at most this many target rows onto the vocabulary at once


@dataclass(frozen=True)
class RowStats:
    """What a data set looks like once tokenized and (optionally) packed into rows of max_seq_length."""

    mean_tokens: float  # tokens in an average row
    max_tokens: int  # tokens in the longest row (sets the memory peak)
    mean_samples: float  # samples per row (1 without packing)
    target_fraction: float  # share of tokens that carry loss
    rows: int  # rows per epoch
    source: str  # how these numbers were obtained

    @classmethod
    def full_rows(cls, seq_len: int, rows: int = 0, target_fraction: float = 0.5) -> "RowStats":
        """Every row filled to seq_len with several samples (packed data, when no data set can be read)."""
        return cls(float(seq_len), seq_len, 2.0, target_fraction, rows, f"assumed full {seq_len}-token rows")


@dataclass(frozen=True)
class JobShape:
    arch: Architecture
    quantization: str
    lora_rank: int
    lora_targets: tuple[str, ...]
    seq_len: int
    micro_batch: int  # rows per forward/backward
    grad_accum: int  # micro-batches per optimizer step on one worker
    checkpointing: str
    rows: RowStats
    optimizer: str = "adamw_8bit"
    engine: str = HF_ENGINE
    gpus: int = 1
    compute_dtype: str = "bf16"  # "fp32" doubles activations and runs matmuls at the TF32 rate (uncalibrated)
    embedding_measured_on_gpu: bool = False  # a calibration row taken before the fast engine's offload mode kept
    # the input embedding in host memory (runspec.fast_support.input_embedding_on_host, 2026-11-29)
    cuda_graphs: bool = False  # training.cuda_graphs asked for; it applies where `graphed` says
    keep_merged_weights: bool = False  # training.keep_merged_weights asked for; the fast engine's `merged_kept`
    measured_equal_lengths: bool | None = None  # a calibration row's equal_lengths column; None: `rows` says

    def __post_init__(self) -> None:
        if self.quantization not in QUANTIZATIONS:
            raise EstimateError(f"model.quantization: {self.quantization!r} cannot be estimated; accepted: "
                                f"{', '.join(QUANTIZATIONS)}")
        if self.checkpointing not in CHECKPOINTING:
            raise EstimateError(f"training.activation_checkpointing: {self.checkpointing!r}; accepted: "
                                f"{', '.join(CHECKPOINTING)}")
        if self.compute_dtype not in ("bf16", "fp32"):
            raise EstimateError(f"model.compute_dtype: {self.compute_dtype!r}; accepted: bf16, fp32")
        if self.engine not in ENGINES:
            raise EstimateError(f"model.engine: {self.engine!r} has no estimator; accepted: {', '.join(ENGINES)}")
        if self.engine == FAST_ENGINE and (self.quantization, self.compute_dtype) != ("nf4", "bf16"):
            raise EstimateError(f"model.engine: {FAST_ENGINE} runs an nf4 base with bf16 compute, not "
                                f"{self.quantization} with {self.compute_dtype}")
        if self.optimizer not in OPTIMIZERS:
            raise EstimateError(f"training.optimizer: {self.optimizer!r}; accepted: {', '.join(OPTIMIZERS)}")
        unknown = [name for name in self.lora_targets if name not in self.arch.module_names]
        if unknown or not self.lora_targets:
            raise EstimateError(f"lora.target_modules: {unknown or 'none'} not in {self.arch.name}; accepted: "
                                f"all-linear or names among {', '.join(self.arch.module_names)}")
        if min(self.lora_rank, self.seq_len, self.micro_batch, self.grad_accum, self.gpus) < 1:
            raise EstimateError("job shape: rank, seq_len, micro_batch, grad_accum and gpus must be >= 1")

    def with_(self, **changes) -> "JobShape":
        return replace(self, **changes)

    @property
    def input_embedding_on_host(self) -> bool:
        """Whether the engine keeps the input embedding in host memory for this job (the rule the engine follows)."""
        return (self.engine == FAST_ENGINE and not self.embedding_measured_on_gpu
                and input_embedding_on_host(self.checkpointing, self.arch.tied))

    @property
    def graphed(self) -> bool:
        """Whether the engine replays the layers as CUDA graphs for this job (runspec.resolve's rule)."""
        return layers_graphed(self.cuda_graphs, self.engine == FAST_ENGINE, self.arch.model_type)

    @property
    def merged_kept(self) -> bool:
        """Whether the engine keeps every group's merged weight between optimizer steps for this job."""
        return self.keep_merged_weights and self.engine == FAST_ENGINE

    @property
    def graphed_tokens(self) -> int:
        """Rows of the captured micro-batch shape: the micro-batch's capacity plus one row per sample slot, the
        slots a power of two above the micro-batch's samples (train_core.fast.graphs.GraphedLayers)."""
        samples = math.ceil(self.micro_batch * max(1.0, self.rows.mean_samples))
        return self.max_tokens_per_micro_batch + 2 ** math.ceil(math.log2(samples + 1))

    @property
    def tokens_per_micro_batch(self) -> float:
        """Mean tokens of one micro-batch (rows are laid end to end, padding-free)."""
        return self.micro_batch * self.rows.mean_tokens

    @property
    def max_tokens_per_micro_batch(self) -> int:
        return self.micro_batch * self.rows.max_tokens

    @property
    def masked(self) -> bool:
        """More than one sample per micro-batch: the transformers + PEFT engine then builds a dense block-diagonal
        attention mask (the fast engine attends within each sample: see equal_lengths)."""
        return self.micro_batch > 1 or self.rows.mean_samples > 1.0

    @property
    def equal_lengths(self) -> bool:
        """Whether every micro-batch's samples have one length (the fast engine then attends in one batched call, else
        through varlen flash attention): as measured, else when every row is one sample and all rows have one length,
        or a micro-batch is one such row and eager (CUDA graphs pad micro-batches of a new shape into varlen ones)."""
        if self.measured_equal_lengths is not None:
            return self.measured_equal_lengths
        one_length = self.rows.mean_tokens == self.rows.max_tokens or (self.micro_batch == 1 and not self.graphed)
        return self.rows.mean_samples <= 1.0 and one_length

    @property
    def mean_sample_tokens(self) -> float:
        """Tokens of an average sample (a packed row holds several)."""
        return self.rows.mean_tokens / max(1.0, self.rows.mean_samples)

    def targets(self, tokens: float) -> float:
        return tokens * self.rows.target_fraction

    @property
    def passes(self) -> int:
        """Passes over the layers per micro-batch: forward and backward, plus a recompute when checkpointing."""
        return 2 if self.checkpointing == "none" else 3

    @cached_property
    def lora_linears(self):
        return tuple(linear for linear in self.arch.linears if linear.name in self.lora_targets)

    @cached_property
    def lora_params(self) -> int:
        return self.arch.layers * sum(self.lora_rank * (l.inputs + l.outputs) for l in self.lora_linears)

    @property
    def lora_tensors(self) -> int:
        return 2 * len(self.lora_targets) * self.arch.layers

    @property
    def activation_scale(self) -> float:
        """Bytes of an activation relative to bf16."""
        return 2.0 if self.compute_dtype == "fp32" else 1.0

    @property
    def float_base(self) -> bool:
        return self.quantization in ("bf16", "fp32")

    @property
    def rows_per_step(self) -> int:
        return self.micro_batch * self.grad_accum * self.gpus
