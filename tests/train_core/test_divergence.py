"""A NaN/inf loss or weight stops training with one clear error; no checkpoint or adapter holds the bad weights."""
from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from runspec.config import load_config
from train_core.errors import TrainingDiverged
from train_core.trainer import Trainer, TrainHooks


def poisoned_trainer(config_path, at_step: int) -> Trainer:
    """A real trainer whose first LoRA tensor turns to NaN right after optimizer step `at_step` (a fault injected
    into the weights, as a too-high learning rate would leave them)."""
    config = load_config(config_path)
    holder: dict = {}

    def on_metrics(record: dict) -> None:
        if record.get("step") == at_step and "loss" in record:
            with torch.no_grad():
                holder["trainer"].trainable[0].fill_(math.nan)

    trainer = Trainer(config, hooks=TrainHooks(on_metrics=on_metrics), log=lambda message: None)
    holder["trainer"] = trainer
    return trainer


def committed_weights_are_finite(trainer: Trainer, tmp_path) -> bool:
    step = trainer.checkpoints.latest_step()
    restored = trainer.checkpoints.load(step, tmp_path / "check")
    return all(bool(torch.isfinite(t).all()) for t in load_file(str(restored / "adapter_model.safetensors")).values())


def test_nan_weights_are_never_checkpointed(config_factory, tmp_path):
    config = config_factory({"training": {"max_steps": 4, "batch_size": 2}, "checkpoint": {"every_steps": 1},
                             "data": {"eval": None}})
    trainer = poisoned_trainer(config, at_step=2)
    with pytest.raises(TrainingDiverged, match=r"adapter weights hold NaN or inf at the checkpoint of step 2; "
                                               r"the last committed checkpoint \(step 1\) is intact"):
        trainer.run()
    assert trainer.checkpoints.latest_step() == 1
    assert committed_weights_are_finite(trainer, tmp_path)
    assert not (tmp_path / "run" / "adapter").exists()


def test_a_nan_loss_stops_before_the_optimizer_step(config_factory, tmp_path):
    config = config_factory({"training": {"max_steps": 6, "batch_size": 2}, "checkpoint": {"every_steps": 2},
                             "data": {"eval": None}})
    trainer = poisoned_trainer(config, at_step=3)
    with pytest.raises(TrainingDiverged, match=r"the loss of step 4 is nan; the last committed checkpoint \(step 2\)"):
        trainer.run()
    assert trainer.checkpoints.latest_step() == 2
    assert committed_weights_are_finite(trainer, tmp_path)
