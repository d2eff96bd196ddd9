"""Optimizer and learning-rate schedule for the trainable (LoRA) parameters."""
from __future__ import annotations

import math

import torch

from runspec.config import TrainingSettings


def build_optimizer(parameters: list[torch.nn.Parameter], settings: TrainingSettings, kind: str):
    options = dict(lr=settings.learning_rate, betas=settings.adam_betas, weight_decay=settings.weight_decay)
    if kind == "adamw_8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(parameters, **options)
    return torch.optim.AdamW(parameters, foreach=False, **options)


def warmup_steps(settings: TrainingSettings, total_steps: int) -> int:
    return settings.warmup_steps + math.ceil(settings.warmup_ratio * total_steps)


def lr_multiplier(step: int, warmup: int, total_steps: int, kind: str) -> float:
    """Multiplier of the peak learning rate for the optimizer step that follows `step` completed steps."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total_steps - warmup)
    progress = min(max(progress, 0.0), 1.0)
    if kind == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer, settings: TrainingSettings, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = warmup_steps(settings, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, warmup, total_steps, settings.lr_scheduler)
    )
