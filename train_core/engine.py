"""What the training loop needs from a model: an Engine, and the Hugging Face + PEFT implementation of it.

The loop only calls this interface, so a native engine (train_core/fast) can replace the PEFT model on
CUDA while checkpoints, data and the loop stay the same.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Protocol

import torch

from runspec.config import TrainConfig
from train_core.device import DevicePath
from train_core.loss import target_loss_sum
from train_core.models.loading import add_lora, load_model


class Engine(Protocol):
    description: str

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The LoRA parameters, in a fixed order."""

    def loss_sum(self, input_ids: torch.Tensor, position_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Sum of token cross-entropies over labels != -100 for one packed (1, T) micro-batch, graph attached."""

    def save_adapter(self, directory: Path) -> None:
        """Write adapter_config.json and adapter_model.safetensors in PEFT's format."""

    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load adapter tensors as written by save_adapter (PEFT key names)."""

    def train(self) -> None: ...

    def eval(self) -> None: ...

    def run_summary(self) -> str | None:
        """What the engine did worth a log line at the end of training (None: nothing)."""

    def parameters_changed(self) -> None:
        """The trainable parameters were updated in place (the optimizer step): drop what was derived from them."""


class HFEngine:
    """A Hugging Face causal LM with PEFT LoRA adapters (the reference path; the only one on CPU)."""

    def __init__(self, config: TrainConfig, path: DevicePath) -> None:
        base, source = load_model(config.model, path)
        self.model = add_lora(base, config.lora, config.training.seed)
        if path.activation_checkpointing in ("full", "offload"):
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.path = path
        self.description = f"{source}; transformers + PEFT"
        self._trainable = [parameter for parameter in self.model.parameters() if parameter.requires_grad]

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return self._trainable

    def _contexts(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        if self.path.device == "cuda":
            stack.enter_context(torch.autocast("cuda", dtype=self.path.compute_dtype))
        if self.path.activation_checkpointing == "offload" and torch.is_grad_enabled():
            stack.enter_context(torch.autograd.graph.save_on_cpu(pin_memory=True))
        return stack

    def loss_sum(self, input_ids: torch.Tensor, position_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        device = self.path.device
        base = self.model.get_base_model()
        with self._contexts():
            hidden = base.model(input_ids=input_ids.to(device), position_ids=position_ids.to(device)).last_hidden_state
            return target_loss_sum(
                hidden, labels.to(device), base.get_output_embeddings(),
                getattr(base.config, "final_logit_softcapping", None),
            )

    def save_adapter(self, directory: Path) -> None:
        self.model.save_pretrained(directory)

    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(self.model, state)
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise ValueError(f"adapter has tensors this model lacks: {unexpected[:3]}")

    def train(self) -> None:
        self.model.train()

    def eval(self) -> None:
        self.model.eval()

    def run_summary(self) -> str | None:
        return None

    def parameters_changed(self) -> None:
        """PEFT reads the adapters on every forward: nothing derived to drop."""


def build_engine(config: TrainConfig, path: DevicePath) -> Engine:
    """The engine runspec.resolve chose for this run (path.engine): the fast one, or transformers + PEFT."""
    if path.engine == "fast":
        from train_core.fast.engine import build_fast_engine

        return build_fast_engine(config, path)
    return HFEngine(config, path)
