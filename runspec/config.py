"""TrainConfig: everything one fine-tuning run needs, loaded from YAML and validated."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from runspec.chat_templates import check_chat_template
from runspec.config_errors import describe_validation_error, read_yaml
from runspec.config_types import MAX_SEED, MAX_STEPS, Flag, Integer, Number
from runspec.errors import ConfigError

STANDALONE_EVERY_STEPS = 50

HUB_DATASET_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class StrictModel(BaseModel):
    """Base for config sections: unknown fields are rejected, numbers are finite, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelSettings(StrictModel):
    name: str = Field(
        "builtin:smollm2-135m-instruct",
        description="Base model: a local HF directory, a .gguf file, a Hub id (when online), or "
        "builtin:smollm2-135m-instruct | builtin:tiny-llama | builtin:tiny-qwen2.",
    )
    quantization: Literal["auto", "nf4", "bf16", "fp32"] = Field(
        "auto",
        description="Base weights: nf4 (4-bit NF4 + double quant via bitsandbytes), bf16 or fp32. auto = nf4 "
        "wherever bitsandbytes can train (CUDA, and CPU when its CPU backend works), else the best float type.",
    )
    compute_dtype: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="Dtype of matmuls and activations. auto = bf16 on CUDA, fp32 on CPU."
    )
    engine: Literal["auto", "hf", "fast"] = Field(
        "auto", description="Training engine: hf = transformers + PEFT (the reference path); fast = our fused NF4 + "
        "LoRA engine (CUDA; llama, mistral, qwen2/3, phi3, gemma2/3; nf4 base, bf16 compute, no LoRA dropout). auto = fast where it "
        "supports the run, else hf.",
    )
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto", description="Attention kernel. auto = sdpa, or eager for models that softcap attention logits "
        "(Gemma 2), which sdpa cannot; sdpa asked for on such a model also gets eager. flash_attention_2 needs the "
        "flash-attn package and a CUDA GPU.",
    )


class DataSettings(StrictModel):
    train: str = Field(
        ..., description="Training data: a JSONL file, a Parquet/Arrow/JSON/CSV file or directory, a dataset saved "
        "with save_to_disk, or a Hub dataset id (online)."
    )
    eval: str | None = Field(None, description="Optional held-out data of the same format, for eval loss.")
    train_split: str = Field("train", description="Split of a saved DatasetDict or Hub dataset to train on.")
    eval_split: str = Field("test", description="Split of a saved DatasetDict or Hub dataset `eval` reads.")
    columns: dict[str, str] | None = Field(
        None, description="Column mapping {field spottune reads: column in the data}, e.g. {instruction: question, "
        "output: answer} or {messages: dialog}, for data whose columns have other names."
    )
    eval_samples: Integer | None = Field(
        None, ge=1, le=10**9,
        description="Evaluate on the first N rows of the eval file only (cheaper evals); None = all.",
    )
    format: Literal["auto", "alpaca", "sharegpt", "messages", "prompt_completion", "text"] = Field(
        "auto", description="Row format; auto detects it from the first row's keys. prompt_completion and text are "
        "TRL's formats (loss on the completion / on every token), tokenized as TRL's SFTTrainer does."
    )
    chat_template: str = Field(
        "auto",
        description="auto = the tokenizer's own chat template (chatml if it has none); 'chatml'; or a Jinja "
        "template string.",
    )
    system_prompt: str | None = Field(None, description="System message prepended to rows that have none.")
    max_seq_length: Integer = Field(
        1024, ge=16, le=1 << 21, description="Tokens per sequence; longer samples are truncated."
    )
    packing: Flag = Field(
        True, description="Pack several samples per sequence (padding-free, no attention across samples)."
    )
    train_on: Literal["assistant", "all"] = Field(
        "assistant", description="Which tokens carry loss: assistant replies only, or every token."
    )

    @field_validator("chat_template")
    @classmethod
    def _known_or_valid_jinja(cls, setting: str) -> str:
        return check_chat_template(setting)


class LoraSettings(StrictModel):
    r: Integer = Field(16, ge=1, le=4096, description="LoRA rank.")
    alpha: Number = Field(16, gt=0, le=1e6, description="LoRA alpha; the update is scaled by alpha / r.")
    dropout: Number = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: Union[Literal["all-linear"], list[str]] = Field(
        "all-linear", description="'all-linear' or a list of module names such as [q_proj, v_proj]."
    )


Beta = Annotated[Number, Field(ge=0.0, lt=1.0)]


class TrainingSettings(StrictModel):
    seed: Integer = Field(
        42, ge=0, le=MAX_SEED, description="Seed for LoRA init, data order (with the epoch) and dropout."
    )
    epochs: Integer = Field(1, ge=1, le=10_000, description="Passes over the training data.")
    max_steps: Integer | None = Field(
        None, ge=1, le=MAX_STEPS, description="Stop after this many optimizer steps (caps epochs)."
    )
    batch_size: Integer = Field(8, ge=1, le=65_536, description="Sequences per optimizer step, over all workers.")
    micro_batch_size: Union[Annotated[Integer, Field(ge=1, le=65_536)], Literal["auto"]] = Field(
        "auto", description="Sequences per forward/backward (must divide batch_size). auto = on CUDA the fastest "
        "that fits the GPU by the planner's memory model, on CPU the largest within 4096 tokens."
    )
    learning_rate: Number = Field(2e-4, gt=0, le=1.0, description="Peak learning rate.")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="Decay after warm-up.")
    warmup_steps: Integer = Field(0, ge=0, le=MAX_STEPS, description="Linear warm-up steps (added to warmup_ratio's).")
    warmup_ratio: Number = Field(0.0, ge=0.0, le=1.0, description="Warm-up as a fraction of total steps.")
    weight_decay: Number = Field(0.0, ge=0.0, le=10.0, description="AdamW weight decay.")
    adam_betas: tuple[Beta, Beta] = Field((0.9, 0.999), description="AdamW betas.")
    max_grad_norm: Number | None = Field(1.0, gt=0, le=1e6, description="Gradient clipping norm; null disables it.")
    optimizer: Literal["auto", "adamw", "adamw_8bit"] = Field(
        "auto", description="auto = 8-bit AdamW (bitsandbytes) on CUDA, AdamW elsewhere."
    )
    activation_checkpointing: Literal["auto", "none", "full", "offload"] = Field(
        "auto", description="Recompute activations in backward (full), also keep layer inputs on the CPU "
        "(offload), or keep them (none). auto = on CUDA the fastest mode that fits the GPU by the planner's "
        "memory model (sized with the micro-batch), none on CPU."
    )
    cuda_graphs: bool = Field(
        False, description="Replay the decoder layers as CUDA graphs, each micro-batch padded to one shape: faster "
        "where the host CPU bounds the step (small models, and checkpointed layers, which launch their kernels "
        "three times). Needs the fast engine on CUDA and flash attention (not Gemma 2's soft-capped scores); "
        "elsewhere it is off and the device path says so."
    )
    keep_merged_weights: bool = Field(
        False, description="Keep every projection's dequantized weight with its adapter merged in from one optimizer "
        "step to the next (they change only at the step): one dequantization pass a step instead of two a "
        "micro-batch, for 2 bytes per base-model linear parameter of GPU memory, which the planner counts. Fast "
        "engine on CUDA; elsewhere it is off and the device path says so."
    )
    eval_every: Integer | None = Field(
        None, ge=1, le=MAX_STEPS, description="Eval-loss interval in steps (and at the end)."
    )
    log_every: Integer = Field(1, ge=1, le=MAX_STEPS, description="Metrics interval in steps.")

    @model_validator(mode="after")
    def _micro_batch_divides(self) -> "TrainingSettings":
        if isinstance(self.micro_batch_size, int) and self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"micro_batch_size {self.micro_batch_size} must divide batch_size {self.batch_size}"
            )
        return self


class CheckpointPolicy(StrictModel):
    """When checkpoints are committed and how many are kept: a train config's section and a sweep's."""

    every_steps: Union[Annotated[Integer, Field(ge=1, le=MAX_STEPS)], Literal["auto"]] = Field(
        "auto", description="Commit a checkpoint every N optimizer steps (and at the end). auto = in a sweep, the "
        f"Young/Daly optimum from checkpoint cost and preemption rate; in a standalone run, every {STANDALONE_EVERY_STEPS}.",
    )
    keep: Integer = Field(2, ge=1, le=1000, description="Committed checkpoints to keep; older ones are deleted.")

    @property
    def interval_steps(self) -> int:
        """Optimizer steps between commits when no plan has replaced `auto`."""
        return self.every_steps if isinstance(self.every_steps, int) else STANDALONE_EVERY_STEPS


class TrainConfig(StrictModel):
    model: ModelSettings = Field(default_factory=ModelSettings)
    data: DataSettings
    lora: LoraSettings = Field(default_factory=LoraSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    checkpoint: CheckpointPolicy = Field(default_factory=CheckpointPolicy)
    output_dir: str = Field("runs/train", description="Where checkpoints, the adapter and metrics go.")

    def fingerprint(self) -> str:
        """Hash of what defines the trained weights; checkpoints carry it to refuse resuming a different job.

        Settings that only change how the same math is scheduled or measured (micro-batch, activation
        checkpointing, CUDA graphs, engine, logging, eval size, checkpoint cadence) are left out, so a re-planned trial may
        change them on resume.
        """
        significant = self.model_dump(mode="json", exclude={"output_dir", "checkpoint"})
        significant["model"].pop("engine")
        significant["data"].pop("eval_samples")
        for name, default in (("train_split", "train"), ("eval_split", "test"), ("columns", None)):
            if significant["data"][name] == default:  # fingerprints of runs from before these fields stay valid
                significant["data"].pop(name)
        for name in ("micro_batch_size", "activation_checkpointing", "log_every", "eval_every", "cuda_graphs",
                     "keep_merged_weights"):
            significant["training"].pop(name)
        return hashlib.sha256(json.dumps(significant, sort_keys=True).encode()).hexdigest()[:16]


def parse_config(raw: object, source: str, base_dir: Path | None = None) -> TrainConfig:
    """Validate a loaded mapping; relative data paths are resolved against base_dir."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections (model, data, lora, training, ...)")
    try:
        config = TrainConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(source, TrainConfig, error)) from None
    if base_dir is not None:
        config.data.train = _resolve(config.data.train, base_dir)
        if config.data.eval:
            config.data.eval = _resolve(config.data.eval, base_dir)
    return config


def load_config(path: str | Path) -> TrainConfig:
    """Read and validate a train YAML file; relative data paths are taken from the current directory."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    return parse_config(read_yaml(path, ConfigError), str(path))


def _resolve(path: str, base_dir: Path) -> str:
    """A relative path against base_dir; a Hub dataset id (org/name) that is no local path stays as it is."""
    candidate = Path(path)
    if candidate.is_absolute():
        return path
    resolved = base_dir / candidate
    if not resolved.exists() and HUB_DATASET_ID.match(path):
        return path
    return str(resolved)
