"""Which hardware path a run takes (device, weight format, compute dtype, optimizer), and why."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from runspec.config import TrainConfig
from runspec.errors import ConfigError


@dataclass(frozen=True)
class DevicePath:
    device: str  # "cuda" or "cpu"
    quantization: str  # "nf4" | "bf16" | "fp32"
    compute_dtype: torch.dtype
    optimizer: str  # "adamw" | "adamw_8bit"
    activation_checkpointing: str  # "none" | "full" | "offload"
    reason: str

    def describe(self) -> str:
        dtype = str(self.compute_dtype).removeprefix("torch.")
        return (
            f"{self.device}: base weights {self.quantization}, compute {dtype}, optimizer {self.optimizer}, "
            f"activation checkpointing {self.activation_checkpointing} ({self.reason})"
        )


@lru_cache(maxsize=1)
def bitsandbytes_cpu_trains() -> tuple[bool, str]:
    """Probe bitsandbytes' CPU backend: a 4-bit NF4 layer must run forward and backward and give finite grads."""
    try:
        import bitsandbytes as bnb
    except Exception as error:  # missing or broken install
        return False, f"bitsandbytes unavailable ({type(error).__name__})"
    try:
        generator = torch.Generator().manual_seed(0)
        layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4")
        layer.weight = bnb.nn.Params4bit(
            torch.randn(64, 64, generator=generator), requires_grad=False, quant_type="nf4"
        )
        layer = layer.to("cpu")
        inputs = torch.randn(4, 64, generator=generator, requires_grad=True)
        layer(inputs).sum().backward()
        if inputs.grad is None or not torch.isfinite(inputs.grad).all():
            return False, "bitsandbytes CPU backward gave no finite gradient"
    except Exception as error:
        return False, f"bitsandbytes CPU backend failed ({type(error).__name__}: {error})"
    return True, "bitsandbytes CPU backend trains 4-bit layers"


def choose_device_path(config: TrainConfig, force_cpu: bool = False) -> DevicePath:
    cuda = torch.cuda.is_available() and not force_cpu
    model = config.model
    training = config.training
    if cuda:
        quantization = "nf4" if model.quantization == "auto" else model.quantization
        compute = {"auto": torch.bfloat16, "bf16": torch.bfloat16, "fp32": torch.float32}[model.compute_dtype]
        optimizer = "adamw_8bit" if training.optimizer == "auto" else training.optimizer
        checkpointing = "full" if training.activation_checkpointing == "auto" else training.activation_checkpointing
        return DevicePath("cuda", quantization, compute, optimizer, checkpointing, "CUDA GPU found")
    if training.optimizer == "adamw_8bit":
        raise ConfigError("training.optimizer: adamw_8bit needs a CUDA GPU; accepted on CPU: auto, adamw")
    quantization = model.quantization
    reason = "no CUDA GPU"
    if quantization in ("auto", "nf4"):
        trains, why = bitsandbytes_cpu_trains()
        if trains:
            quantization, reason = "nf4", f"no CUDA GPU; {why}"
        elif model.quantization == "nf4":
            raise ConfigError(f"model.quantization: nf4 on CPU is not possible here: {why}; accepted: auto, bf16, fp32")
        else:
            quantization, reason = "fp32", f"no CUDA GPU; {why}, so fp32 weights"
    compute = {"auto": torch.float32, "bf16": torch.bfloat16, "fp32": torch.float32}[model.compute_dtype]
    if training.activation_checkpointing == "offload":
        raise ConfigError("training.activation_checkpointing: offload needs a CUDA GPU; accepted on CPU: auto, none, full")
    checkpointing = "none" if training.activation_checkpointing == "auto" else training.activation_checkpointing
    return DevicePath("cpu", quantization, compute, "adamw", checkpointing, reason)
