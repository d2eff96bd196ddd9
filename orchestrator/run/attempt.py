"""Each attempt's train config, built once from the trial's validated config and the chosen plan row.

The trial's config (its search parameters applied) is validated when the sweep is expanded and read back as a
TrainConfig; an attempt only changes fields the plan row decides, with typed values, by `model_copy(update=...)`.
Nothing is patched through dotted strings and nothing is validated again.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.sweep.planner import PlanRow
from orchestrator.sweep.spec import SweepSpec
from runspec.config import TrainConfig


@dataclass(frozen=True)
class PlannedSettings:
    """Config fields the chosen plan row sets for one attempt; None leaves the trial's value.

    None of them is in the config fingerprint, so each attempt may differ.
    """

    checkpoint_every_steps: int | None = None
    micro_batch_size: int | None = None
    activation_checkpointing: str | None = None

    def fields(self) -> dict[str, Any]:
        """The fields set, by dotted config name (as the launch event records them)."""
        names = {"checkpoint.every_steps": self.checkpoint_every_steps,
                 "training.micro_batch_size": self.micro_batch_size,
                 "training.activation_checkpointing": self.activation_checkpointing}
        return {name: value for name, value in names.items() if value is not None}


def planned_settings(choice: PlanRow, config: TrainConfig, spec: SweepSpec, accelerator: str) -> PlannedSettings:
    """The Young/Daly checkpoint interval when the sweep asks for `auto`, and on a CUDA node the micro-batch and
    checkpointing mode the row was sized with (where the config leaves them `auto`)."""
    every = None
    if spec.checkpoint.every_steps == "auto" and choice.run is not None:
        every = choice.run.checkpoint_every_steps
    micro_batch = mode = None
    if accelerator == "cuda":
        shape = choice.estimate.shape
        if config.training.micro_batch_size == "auto":
            micro_batch = shape.micro_batch
        if config.training.activation_checkpointing == "auto":
            mode = shape.checkpointing
    return PlannedSettings(every, micro_batch, mode)


def attempt_config(config: TrainConfig, settings: PlannedSettings, output_dir: str) -> TrainConfig:
    """A copy of the trial's config with the plan row's settings and the trial's storage prefix as output_dir."""
    checkpoint: dict[str, Any] = {}
    if settings.checkpoint_every_steps is not None:
        checkpoint["every_steps"] = settings.checkpoint_every_steps
    training: dict[str, Any] = {}
    if settings.micro_batch_size is not None:
        training["micro_batch_size"] = settings.micro_batch_size
    if settings.activation_checkpointing is not None:
        training["activation_checkpointing"] = settings.activation_checkpointing
    return config.model_copy(update={
        "output_dir": output_dir,
        "checkpoint": config.checkpoint.model_copy(update=checkpoint),
        "training": config.training.model_copy(update=training),
    })
